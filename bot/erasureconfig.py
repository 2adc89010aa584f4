"""The ``erasure`` section: what Lethe erases beyond redaction, with a homeserver
admin's token, and where that token comes from (never the config file itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import ConfigReader

# A homeserver admin's access token: media deletion, erasure audits, hard purges.
ADMIN_TOKEN_ENV = "LETHE_ADMIN_TOKEN"
DEFAULT_MAX_HELD = "7d"  # Synapse's default redaction_retention_period
DEFAULT_LEDGER = "30d"
# Group or other permission bits: a secret file with any of them is refused.
_NOT_PRIVATE = 0o077


@dataclass(frozen=True)
class ErasureConfig:
    """Erasure beyond redaction, with a homeserver admin's token (from the environment
    or a 0600 file, never from the config itself). Without the token, only redaction."""

    admin_token: str | None = field(default=None, repr=False)
    token_source: str = ""  # where the token came from, for messages: never the token
    media: bool = True  # delete the local media of every message Lethe expires
    max_held_ms: int = 7 * 24 * 3600 * 1000  # audit --erasure: longest an original may stay
    ledger_ms: int = 30 * 24 * 3600 * 1000  # how long redacted event ids are kept for audits

    @property
    def deletes_media(self) -> bool:
        return self.media and self.admin_token is not None


def read_erasure(r: ConfigReader, env: dict[str, str]) -> ErasureConfig:
    section = r.section("erasure")
    token, source = env.get(ADMIN_TOKEN_ENV), ADMIN_TOKEN_ENV
    token_file = r.string(section, "erasure.admin_token_file")
    if not token and token_file is not None:
        path = r.path_of(token_file)
        token, source = _secret_file(r, path, "erasure.admin_token_file"), str(path)
    media = section.get("media", True)
    if not isinstance(media, bool):
        raise r.fail("erasure.media", f"must be true or false, not {media!r}")
    return ErasureConfig(
        admin_token=token or None,
        token_source=source if token else "",
        media=media,
        max_held_ms=r.duration(section, "erasure.max_held", DEFAULT_MAX_HELD),
        ledger_ms=r.duration(section, "erasure.ledger", DEFAULT_LEDGER),
    )


def _secret_file(r: ConfigReader, path: Path, key: str) -> str:
    """A secret kept in its own file, readable by its owner only."""
    try:
        if path.stat().st_mode & _NOT_PRIVATE:
            raise r.fail(key, f"{path} is readable by others; chmod 600 it")
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise r.fail(key, f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise r.fail(key, f"{path} is empty")
    return text
