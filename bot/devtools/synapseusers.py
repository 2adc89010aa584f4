"""Users on a local Synapse (bot/devtools/localsynapse.py), made through its
shared-secret registration API."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# urllib honours http_proxy/https_proxy from the environment, and a proxy would see (or
# forward) our loopback traffic. An opener with an empty ProxyHandler never uses one.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SynapseRegistrationError(RuntimeError):
    """The shared-secret registration API refused to create a user."""

    def __init__(self, message: str, *, status: int, errcode: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str
    device_id: str
    password: str

    def __repr__(self) -> str:
        # Keep credentials out of pytest failure output and log lines.
        return f"RegisteredUser(user_id={self.user_id!r}, device_id={self.device_id!r})"


def _request(base_url: str, method: str, path: str,
             body: Mapping[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{base_url}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    with OPENER.open(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def register_user(
    base_url: str, server_name: str, shared_secret: str, localpart: str,
    password: str | None = None, *, admin: bool = False,
) -> RegisteredUser:
    """Create a user through the shared-secret admin API and return its credentials."""
    if password is None:
        password = secrets.token_urlsafe(24)
    path = "/_synapse/admin/v1/register"
    nonce: str = _request(base_url, "GET", path)["nonce"]
    # MAC as documented for the shared-secret registration API:
    # HMAC-SHA1(secret, nonce \0 username \0 password \0 admin|notadmin).
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    for i, part in enumerate((nonce, localpart, password, "admin" if admin else "notadmin")):
        if i:
            mac.update(b"\x00")
        mac.update(part.encode())
    body = {
        "nonce": nonce,
        "username": localpart,
        "password": password,
        "admin": admin,
        "mac": mac.hexdigest(),
    }
    try:
        result = _request(base_url, "POST", path, body)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {}
        errcode = payload.get("errcode")
        detail = payload.get("error") or raw.decode(errors="replace")[:200]
        raise SynapseRegistrationError(
            f"could not register {localpart!r} on {server_name}: "
            f"HTTP {err.code} {errcode or ''} {detail}".rstrip(),
            status=err.code,
            errcode=errcode,
        ) from None
    return RegisteredUser(
        user_id=result["user_id"],
        access_token=result["access_token"],
        device_id=result["device_id"],
        password=password,
    )
