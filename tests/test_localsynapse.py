"""Tests for the throwaway local Synapse launcher (bot.devtools.localsynapse)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.devtools.localsynapse import LocalSynapse, synapse_available
from bot.devtools.synapseusers import RegisteredUser, SynapseRegistrationError

pytestmark = [
    pytest.mark.synapse,
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
]

# Loopback only: never let an http_proxy from the environment see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(hs: LocalSynapse, path: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{hs.base_url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with _OPENER.open(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _whoami(hs: LocalSynapse, user: RegisteredUser) -> str:
    return str(_get(hs, "/_matrix/client/v3/account/whoami", user.access_token)["user_id"])


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def synapse(tmp_path: Path) -> Iterator[LocalSynapse]:
    with LocalSynapse(tmp_path / "synapse") as hs:
        yield hs


def test_config_rate_limits_and_extra_config(tmp_path: Path) -> None:
    relaxed = LocalSynapse(tmp_path / "a").build_config()
    assert relaxed["rc_message"]["per_second"] >= 1000
    assert relaxed["trusted_key_servers"] == []
    assert relaxed["federation_domain_whitelist"] == []
    assert relaxed["listeners"][0]["bind_addresses"] == ["127.0.0.1"]

    strict = LocalSynapse(
        tmp_path / "b", rate_limited=True, extra_config={"presence": {"enabled": True}}
    ).build_config()
    assert "rc_message" not in strict  # Synapse's default (0.2/s, burst 10) applies
    assert strict["rc_registration"]["per_second"] >= 1000
    assert strict["rc_room_creation"]["per_second"] >= 1000
    assert strict["presence"] == {"enabled": True}


def test_lifecycle_register_restart_stop(tmp_path: Path) -> None:
    hs = LocalSynapse(tmp_path / "synapse")
    try:
        started = time.monotonic()
        hs.start()
        print(f"LocalSynapse.start() took {time.monotonic() - started:.2f}s")
        assert hs.is_running()
        assert hs.base_url == f"http://127.0.0.1:{hs.port}"
        assert hs.config_path.is_file() and hs.log_path.is_file()

        alice = hs.register("alice")
        admin = hs.register("boss", "correct horse", admin=True)
        assert alice.user_id == "@alice:localhost"
        assert alice.device_id and alice.access_token and alice.password
        assert admin.password == "correct horse"
        assert _whoami(hs, alice) == "@alice:localhost"
        assert _whoami(hs, admin) == "@boss:localhost"
        version = _get(hs, "/_synapse/admin/v1/server_version", admin.access_token)
        assert version["server_version"]

        # Nothing secret reaches Synapse's log.
        log_text = hs.log_path.read_text()
        for secret in (hs.registration_shared_secret, alice.access_token, alice.password):
            assert secret not in log_text

        base_url = hs.base_url
        hs.restart()
        assert hs.is_running()
        assert hs.base_url == base_url
        # Same database: the token issued before the restart still works.
        assert _whoami(hs, alice) == "@alice:localhost"
    finally:
        hs.stop()

    assert not hs.is_running()
    assert not _port_is_open(hs.port)
    hs.stop()  # idempotent


def test_register_existing_localpart_fails_clearly(synapse: LocalSynapse) -> None:
    synapse.register("carol")
    with pytest.raises(SynapseRegistrationError, match="carol") as excinfo:
        synapse.register("carol")
    assert excinfo.value.errcode == "M_USER_IN_USE"
    assert excinfo.value.status == 400
