"""The bot's cross-signing identity, and reading other users' identities.

Element excludes devices that their owner has not cross-signed (MSC4153): it
sends them no room keys and shows what they send as undecryptable. So the bot
has its own master, self-signing and user-signing keys, uploads them, and signs
its own device with the self-signing key.

The private keys live in ``data_dir/cross_signing.json`` (mode 0600), sealed
with NaCl's SecretBox under a key derived from the pickle key by Argon2id; the
public master key sits beside them in clear so checks need no secret. Signatures
and canonical JSON come from matrix-org's ``signedjson``; nothing here is
hand-written cryptography.

Everything read from ``/keys/query`` is untrusted: malformed or wrongly signed
keys make a user or device count as not cross-signed, never an exception.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils
from nacl.exceptions import CryptoError
from signedjson.key import decode_signing_key_base64, decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

from bot.errors import LetheError
from bot.matrix.api import HomeserverUnavailable, HttpReply, MatrixHttp
from bot.matrix.files import write_secret

log = logging.getLogger(__name__)

KEY_FILE_VERSION = 1
USAGES = ("master", "self_signing", "user_signing")


class IdentityError(LetheError, RuntimeError):
    """The cross-signing identity cannot be set up; the message says what to do."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: str) -> str:
    """A key as people compare it out of band: groups of four characters."""
    return " ".join(public_key[i:i + 4] for i in range(0, len(public_key), 4))


@dataclass(frozen=True)
class SigningKeys:
    """The three private cross-signing keys (32-byte Ed25519 seeds)."""

    seeds: Mapping[str, bytes] = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKeys:
        return cls({usage: nacl.utils.random(32) for usage in USAGES})

    def public(self, usage: str) -> str:
        return _b64(bytes(nacl.signing.SigningKey(self.seeds[usage]).verify_key))

    def signer(self, usage: str) -> Any:
        """A signedjson signing key whose key id is ``ed25519:<public key>``."""
        return decode_signing_key_base64("ed25519", self.public(usage), _b64(self.seeds[usage]))

    def key_object(self, user_id: str, usage: str) -> dict[str, Any]:
        """The cross-signing key as uploaded: sub-keys are signed by the master key."""
        public = self.public(usage)
        obj: dict[str, Any] = {
            "user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}
        }
        if usage != "master":
            obj = sign_json(obj, user_id, self.signer("master"))
        return obj


# --- the sealed key file --------------------------------------------------------

def _box(pickle_key: str, salt: bytes) -> nacl.secret.SecretBox:
    key = nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, pickle_key.encode("utf-8"), salt,
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    )
    return nacl.secret.SecretBox(key)


def save_keys(path: Path, user_id: str, keys: SigningKeys, pickle_key: str) -> None:
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    secret = json.dumps({usage: _b64(seed) for usage, seed in keys.seeds.items()})
    sealed = _box(pickle_key, salt).encrypt(secret.encode("utf-8"))
    write_secret(path, json.dumps({
        "version": KEY_FILE_VERSION,
        "user_id": user_id,
        "master": keys.public("master"),
        "kdf": "argon2id",
        "salt": _b64(salt),
        "sealed": _b64(bytes(sealed)),
    }, indent=1))


def _read_key_file(path: Path) -> Any:
    """The key file's JSON, or None when there is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path} is damaged ({type(exc).__name__})") from None


def stored_master(path: Path) -> str | None:
    """The public master key of the key file, without the pickle key; None if absent."""
    data = _read_key_file(path)
    if data is None:
        return None
    master = data.get("master") if isinstance(data, dict) else None
    if not isinstance(master, str):
        raise IdentityError(f"{path} is damaged (no master key)")
    return master


def load_keys(path: Path, user_id: str, pickle_key: str) -> SigningKeys | None:
    """The private keys, or None when there is no key file."""
    data = _read_key_file(path)
    if data is None:
        return None
    try:
        if data["version"] != KEY_FILE_VERSION or data["kdf"] != "argon2id":
            raise IdentityError(f"{path}: unknown key file version")
        if data["user_id"] != user_id:
            raise IdentityError(f"{path} holds the identity of {data['user_id']}, not "
                                f"{user_id}; use another data_dir")
        secret = _box(pickle_key, _unb64(data["salt"])).decrypt(_unb64(data["sealed"]))
        seeds = {usage: _unb64(value) for usage, value in json.loads(secret).items()}
    except CryptoError:
        raise IdentityError(f"{path} cannot be opened with this pickle key: it was sealed "
                            "under another one") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IdentityError(f"{path} is damaged ({type(exc).__name__})") from None
    if set(seeds) != set(USAGES) or any(len(s) != 32 for s in seeds.values()):
        raise IdentityError(f"{path} is damaged (wrong keys)")
    keys = SigningKeys(seeds)
    if keys.public("master") != data.get("master"):
        raise IdentityError(f"{path} is damaged (the master key does not match)")
    return keys


# --- reading identities from /keys/query ---------------------------------------------

@dataclass(frozen=True)
class UserIdentity:
    """What the homeserver says of one user's cross-signing, with every signature checked.

    ``master`` is None when the user has no (well-formed) master key;
    ``self_signing`` only when the master key signed it; ``signed_devices`` maps each
    device the self-signing key signed (and that signed itself) to its Ed25519 key.
    """

    user_id: str
    master: str | None = None
    self_signing: str | None = None
    signed_devices: Mapping[str, str] = field(default_factory=dict)
    devices: Mapping[str, str] = field(default_factory=dict)

    def device_cross_signed(self, device_id: str, ed25519: str | None = None) -> bool:
        key = self.signed_devices.get(device_id)
        return key is not None and (ed25519 is None or key == ed25519)


def _single_key(obj: Any, user_id: str, usage: str) -> str | None:
    if not isinstance(obj, Mapping) or obj.get("user_id") != user_id:
        return None
    usages = obj.get("usage")
    keys = obj.get("keys")
    if not isinstance(usages, list) or usage not in usages or not isinstance(keys, Mapping):
        return None
    if len(keys) != 1:
        return None
    ((key_id, public),) = keys.items()
    if not isinstance(public, str) or key_id != f"ed25519:{public}":
        return None
    return public


def _signed_by(obj: Any, user_id: str, public: str, key_name: str | None = None) -> bool:
    """Whether ``obj`` carries ``user_id``'s valid signature by the Ed25519 key
    ``public``, whose key id is ``ed25519:<key_name>`` (the public key itself for
    cross-signing keys, the device id for a device's own key)."""
    if not isinstance(obj, Mapping):
        return False
    try:
        verify_key = decode_verify_key_bytes(f"ed25519:{key_name or public}", _unb64(public))
        verify_signed_json(dict(obj), user_id, verify_key)
    except (SignatureVerifyException, ValueError, TypeError, KeyError, AttributeError):
        return False
    return True


def read_identity(body: Mapping[str, Any], user_id: str) -> UserIdentity:
    """One user's identity from a ``/keys/query`` answer, every signature verified."""

    def section(name: str) -> Any:
        part = body.get(name)
        return part.get(user_id) if isinstance(part, Mapping) else None

    master_obj = section("master_keys")
    master = _single_key(master_obj, user_id, "master")
    ssk_obj = section("self_signing_keys")
    ssk = _single_key(ssk_obj, user_id, "self_signing")
    if master is None or ssk is None or not _signed_by(ssk_obj, user_id, master):
        ssk = None
    devices: dict[str, str] = {}
    signed: dict[str, str] = {}
    raw_devices = section("device_keys")
    if isinstance(raw_devices, Mapping):
        for device_id, dev in raw_devices.items():
            if not isinstance(dev, Mapping) or dev.get("device_id") != device_id \
                    or dev.get("user_id") != user_id:
                continue
            keys = dev.get("keys")
            ed = keys.get(f"ed25519:{device_id}") if isinstance(keys, Mapping) else None
            if not isinstance(ed, str):
                continue
            devices[device_id] = ed
            plain = {k: v for k, v in dev.items() if k != "unsigned"}
            if ssk is not None and _signed_by(plain, user_id, ssk) \
                    and _signed_by(plain, user_id, ed, device_id):
                signed[device_id] = ed
    return UserIdentity(user_id, master, ssk, signed, devices)


async def query_identities(http: MatrixHttp, user_ids: list[str]) -> dict[str, UserIdentity]:
    reply = await http.query_keys({user: [] for user in user_ids}, timeout_ms=10_000)
    if not reply.ok:
        raise HomeserverUnavailable(f"/keys/query: HTTP {reply.status} {reply.errcode}")
    return {user: read_identity(reply.body, user) for user in user_ids}


# --- the bot's own identity ---------------------------------------------------------

@dataclass(frozen=True)
class OwnIdentity:
    """The outcome of making sure the bot's device is cross-signed."""

    master: str
    created: bool = False


async def _upload_keys(http: MatrixHttp, user_id: str, keys: SigningKeys,
                       password: str | None) -> None:
    body: dict[str, Any] = {
        f"{usage}_key": keys.key_object(user_id, usage) for usage in USAGES
    }
    reply = await http.upload_signing_keys(body)
    if reply.status == 401 and "flows" in reply.body:
        # Replacing an existing identity needs user-interactive auth (a first upload
        # does not, MSC3967).
        if not password:
            raise IdentityError(
                "the homeserver asks for the bot's password to upload its cross-signing "
                "keys; set LETHE_PASSWORD (or bot.password) and run `lethe login "
                "--reset-identity`")
        if not _offers_password(reply):
            raise IdentityError("the homeserver asks for an authentication other than the "
                                "password to upload cross-signing keys; Lethe offers only "
                                "the password")
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "session": reply.body.get("session"),
        }
        reply = await http.upload_signing_keys(body)
    if not reply.ok:
        raise IdentityError(f"uploading the cross-signing keys failed: HTTP {reply.status} "
                            f"{reply.errcode} {str(reply.body.get('error', ''))[:200]}")


def _offers_password(reply: HttpReply) -> bool:
    flows = reply.body.get("flows")
    return isinstance(flows, list) and any(
        isinstance(f, Mapping) and f.get("stages") == ["m.login.password"] for f in flows
    )


async def _sign_device(http: MatrixHttp, user_id: str, device_id: str, device_ed25519: str,
                       keys: SigningKeys) -> None:
    reply = await http.query_keys({user_id: [device_id]})
    devices = reply.body.get("device_keys", {}).get(user_id, {}) if reply.ok else {}
    device = devices.get(device_id) if isinstance(devices, Mapping) else None
    if not isinstance(device, Mapping):
        raise IdentityError(f"the homeserver has no keys for device {device_id} yet")
    # Sign only the device keys this process holds the private half of: a homeserver
    # must not get the bot to vouch for a key of its choosing.
    keys_field = device.get("keys")
    served = keys_field.get(f"ed25519:{device_id}") if isinstance(keys_field, Mapping) else None
    if served != device_ed25519:
        raise IdentityError(f"the homeserver serves another key for device {device_id} "
                            "than the bot's own; not signing it")
    plain = {k: v for k, v in device.items() if k not in ("unsigned", "signatures")}
    signed = sign_json(plain, user_id, keys.signer("self_signing"))
    upload = {user_id: {device_id: {**plain, "signatures": signed["signatures"]}}}
    reply = await http.upload_signatures(upload)
    failures = reply.body.get("failures") if reply.ok else None
    if not reply.ok or failures:
        raise IdentityError(f"signing device {device_id} failed: HTTP {reply.status} "
                            f"{json.dumps(failures)[:200] if failures else reply.errcode}")


async def ensure_identity(
    http: MatrixHttp,
    *,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    key_path: Path,
    pickle_key: str,
    password: str | None,
    reset: bool = False,
) -> OwnIdentity:
    """Make sure the bot has a cross-signing identity and its device is signed by it.

    First start: create the keys, seal them to disk, then upload them (so a crash in
    between leaves keys to upload, never an identity without its private keys). Later
    starts reuse them and sign a new device. A key file that does not match the
    homeserver's identity, or a missing one next to an existing identity, is an
    ``IdentityError`` naming the way out; ``reset`` replaces the identity (it needs
    the password).
    """
    server = (await query_identities(http, [user_id]))[user_id]
    keys = load_keys(key_path, user_id, pickle_key)
    created = False
    if reset:
        # Staged beside the old keys, which stay until the homeserver took the new ones
        # (a wrong password must not leave the bot with neither).
        keys = SigningKeys.generate()
        staged = key_path.with_name(key_path.name + ".new")
        save_keys(staged, user_id, keys, pickle_key)
        await _upload_keys(http, user_id, keys, password)
        os.replace(staged, key_path)
        created = True
    elif keys is None:
        if server.master is not None:
            raise IdentityError(
                f"the homeserver holds a cross-signing identity for {user_id} (master key "
                f"{fingerprint(server.master)}) but its private keys are not in {key_path} "
                "(the key store was lost or this is another data_dir). Element users will "
                "not see this device as verified. To make a new identity: set "
                "LETHE_PASSWORD and run `lethe login --reset-identity`")
        keys = SigningKeys.generate()
        save_keys(key_path, user_id, keys, pickle_key)
        await _upload_keys(http, user_id, keys, password)
        created = True
    elif server.master is None:
        await _upload_keys(http, user_id, keys, password)  # saved, but never uploaded
    elif server.master != keys.public("master"):
        raise IdentityError(
            f"the homeserver holds another cross-signing identity for {user_id} (master "
            f"key {fingerprint(server.master)}) than {key_path} ("
            f"{fingerprint(keys.public('master'))}); somebody replaced it. To make the "
            "bot's own the current one again: set LETHE_PASSWORD and run "
            "`lethe login --reset-identity`")
    if created or server.self_signing != keys.public("self_signing") \
            or not server.device_cross_signed(device_id, device_ed25519):
        await _sign_device(http, user_id, device_id, device_ed25519, keys)
        log.info("device %s of %s is cross-signed (master key %s)", device_id, user_id,
                 fingerprint(keys.public("master")))
    return OwnIdentity(keys.public("master"), created)
