"""The bot's saved login (access token, device id), mode 0600 under ``data_dir``.

nio-free, so the administration commands can read it without loading nio."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bot.errors import HomeserverError
from bot.matrix.files import write_secret


class LoginFailed(HomeserverError, RuntimeError):
    """The homeserver refused the login, or no credentials are available."""


@dataclass(frozen=True)
class Credentials:
    user_id: str
    device_id: str
    access_token: str
    homeserver: str

    def __repr__(self) -> str:  # never print the token
        return f"Credentials(user_id={self.user_id!r}, device_id={self.device_id!r})"


def load_credentials(path: Path) -> Credentials | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(
            data["user_id"], data["device_id"], data["access_token"], data["homeserver"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoginFailed(
            f"{path}: credentials file is damaged ({type(exc).__name__}); "
            "delete it and run `lethe login` again (a new device will be created)"
        ) from None


def save_credentials(path: Path, creds: Credentials) -> None:
    write_secret(
        path,
        json.dumps(
            {
                "user_id": creds.user_id,
                "device_id": creds.device_id,
                "access_token": creds.access_token,
                "homeserver": creds.homeserver,
            }
        ),
    )
