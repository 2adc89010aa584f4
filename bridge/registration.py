"""The appservice registration file: what the homeserver loads (``app_service_config_files``)
and where the bridge reads its tokens. It holds both secrets, so it is written with
mode 0600 and never logged.
"""

from __future__ import annotations

import logging
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from bot.matrix.files import write_secret
from bridge.config import BridgeConfig

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """The registration file cannot be written or used; the message names the file."""


@dataclass(frozen=True)
class Registration:
    id: str
    url: str
    sender_localpart: str
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)


def user_namespace(server_name: str) -> str:
    """Every user of this homeserver (the namespace is not exclusive: it only asks the
    homeserver for their rooms' events and lets the bridge act as them)."""
    return "@.*:" + re.escape(server_name)


def build_registration(config: BridgeConfig, url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise RegistrationError(f"--url must be an http(s) URL the homeserver can reach, "
                                f"like http://127.0.0.1:{config.port}, not {url!r}")
    return {
        "id": config.appservice_id,
        "url": url.rstrip("/"),
        "as_token": secrets.token_urlsafe(32),
        "hs_token": secrets.token_urlsafe(32),
        "sender_localpart": config.localpart,
        "namespaces": {
            "users": [{"exclusive": False, "regex": user_namespace(config.server_name)}],
            "aliases": [],
            "rooms": [],
        },
        "receive_ephemeral": True,  # read receipts, pushed
        "rate_limited": False,  # redactions are the bridge's whole job
    }


def write_registration(path: Path, data: dict[str, Any], *, force: bool = False) -> None:
    """Write privately and atomically; refuse to replace an existing file unless ``force``
    (new tokens mean the homeserver must load the file again)."""
    if path.exists() and not force:
        raise RegistrationError(
            f"{path}: exists; pass --force to replace it (the tokens change, so the homeserver "
            "must then be restarted with the new file)")
    write_secret(path, "# Lethe bridge appservice registration. Secret: keep mode 0600.\n"
                 + yaml.safe_dump(data, sort_keys=False), secure_parent=False)


def load_registration(path: Path) -> Registration:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistrationError(
            f"{path}: no registration file; create it with `lethe bridge registration "
            "--url URL` and add it to app_service_config_files in homeserver.yaml") from None
    except OSError as exc:
        raise RegistrationError(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s is readable by other users; it holds the bridge's tokens: "
                    "chmod 600 it", path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        # The parser's message may quote a line of the file: a token.
        raise RegistrationError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise RegistrationError(f"{path}: must be a YAML mapping (an appservice registration)")
    values: dict[str, str] = {}
    for key in ("id", "url", "sender_localpart", "as_token", "hs_token"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise RegistrationError(f"{path}: {key}: must be a non-empty string")
        values[key] = value
    return Registration(**values)


def check_matches(registration: Registration, config: BridgeConfig) -> None:
    """The registration must describe this bridge, or the homeserver and the bridge
    disagree about who the bridge is."""
    path = config.registration_path
    if registration.id != config.appservice_id:
        raise RegistrationError(f"{path}: id is {registration.id!r} but bridge.id in "
                                f"{config.path} is {config.appservice_id!r}")
    if registration.sender_localpart != config.localpart:
        raise RegistrationError(
            f"{path}: sender_localpart is {registration.sender_localpart!r} but bridge.user_id "
            f"in {config.path} is {config.user_id}")
