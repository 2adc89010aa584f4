"""Which devices get the keys of the bot's encrypted notices (``e2ee.trust``).

- ``tofu``: every device of the room's members, as Element's default mode does.
- ``verified``: only devices cross-signed by their owner, whose identity (master
  key) the bot pinned the first time it saw that user. A pinned identity that
  changes is warned about once and its devices get nothing until an operator
  accepts the new one (``lethe trust accept USER``, which forgets the pin).

Pins are public keys, not secrets; they live in ``data_dir/identities.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.matrix.api import MatrixHttp
from bot.matrix.crosssigning import UserIdentity, fingerprint, query_identities
from bot.matrix.files import write_secret

log = logging.getLogger(__name__)

class IdentityPins:
    """user id -> master key first seen, kept in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pins: dict[str, str] = {}
        self._mtime: float | None = None
        self._reload()

    def _reload(self) -> None:
        """Re-read the file when it changed: `lethe trust accept` edits it while the
        bot runs."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._pins, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s is damaged; starting with no pinned identities", self.path)
            data = {}
        self._pins = {k: v for k, v in data.items() if isinstance(v, str)} \
            if isinstance(data, dict) else {}

    def get(self, user_id: str) -> str | None:
        self._reload()
        return self._pins.get(user_id)

    def pin(self, user_id: str, master: str) -> None:
        self._pins[user_id] = master
        self._save()

    def forget(self, user_id: str) -> bool:
        self._reload()
        if self._pins.pop(user_id, None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        write_secret(self.path, json.dumps(self._pins, indent=1, sort_keys=True))
        self._mtime = self.path.stat().st_mtime


def trusted_devices(identity: UserIdentity, pins: IdentityPins) -> dict[str, str]:
    """The devices of ``identity`` that ``verified`` mode shares keys with (device id ->
    Ed25519 key). Pins the identity on first use; warns when it changed."""
    if identity.master is None:
        return {}
    pinned = pins.get(identity.user_id)
    if pinned is None:
        pins.pin(identity.user_id, identity.master)
        log.info("pinned the identity of %s (master key %s)", identity.user_id,
                 fingerprint(identity.master))
    elif pinned != identity.master:
        return {}
    return dict(identity.signed_devices)


class DeviceTrust:
    """Marks devices in nio's store before the bot sends into a room (verified mode)."""

    def __init__(self, mode: str, http: MatrixHttp, pins_path: Path) -> None:
        self.mode = mode
        self._http = http
        self._pins = IdentityPins(pins_path)
        self._warned: set[tuple[str, str]] = set()

    @property
    def share_with_unverified(self) -> bool:
        return self.mode == "tofu"

    async def prepare(self, client: Any, user_ids: Iterable[str]) -> None:
        """Verify the cross-signed devices of pinned identities and blacklist every
        other device of ``user_ids``, so nio shares room keys with the former only."""
        if self.mode != "verified":
            return
        users = sorted(set(user_ids))
        if not users:
            return
        identities = await query_identities(self._http, users)
        for user_id in users:
            identity = identities[user_id]
            self._warn_if_changed(identity)
            allowed = trusted_devices(identity, self._pins)
            for device in client.device_store.active_user_devices(user_id):
                if allowed.get(device.id) == device.ed25519:
                    if device.blacklisted:
                        client.unblacklist_device(device)
                    if not device.verified:
                        client.verify_device(device)
                else:
                    if device.verified:
                        client.unverify_device(device)
                    if not device.blacklisted:
                        client.blacklist_device(device)

    def _warn_if_changed(self, identity: UserIdentity) -> None:
        pinned = self._pins.get(identity.user_id)
        if pinned is None or identity.master is None or pinned == identity.master:
            return
        if (identity.user_id, identity.master) in self._warned:
            return
        self._warned.add((identity.user_id, identity.master))
        log.warning(
            "the cross-signing identity of %s changed (pinned master key %s, now %s): "
            "e2ee.trust is 'verified', so the bot's notices are not shared with that user's "
            "devices until an operator accepts it with `lethe trust accept %s`",
            identity.user_id, fingerprint(pinned), fingerprint(identity.master),
            identity.user_id)
