"""LocalSynapse on PostgreSQL (Synapse's psycopg2 database, a LocalPostgres server on
loopback): it starts, registers, takes a message, and keeps it in that database."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.devtools.localpostgres import LocalPostgres, postgres_available
from bot.devtools.localsynapse import LocalSynapse, synapse_available

pytestmark = [
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
    pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL server binaries"),
]

# Loopback only: never let an http_proxy from the environment see these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(hs: LocalSynapse, method: str, path: str, token: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{hs.base_url}/_matrix/client/v3{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with _OPENER.open(req, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


@pytest.fixture
def postgres_synapse(tmp_path: Path) -> Iterator[tuple[LocalSynapse, LocalPostgres]]:
    pg = LocalPostgres()
    pg.start()
    try:
        pg.create("synapse")
        with LocalSynapse(tmp_path / "synapse", database=pg.synapse_database("synapse")) as hs:
            yield hs, pg
    finally:
        pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)


def test_synapse_runs_on_postgres(postgres_synapse: tuple[LocalSynapse, LocalPostgres]) -> None:
    hs, pg = postgres_synapse
    assert hs.build_config()["database"]["name"] == "psycopg2"
    # Synapse refuses other collations unless told to allow them; initdb made it C.
    assert pg.psql("SELECT datcollate FROM pg_database WHERE datname = 'synapse'").strip() == "C"

    alice = hs.register("alice")
    token = alice.access_token
    room_id = _call(hs, "POST", "/createRoom", token, {"preset": "private_chat"})["room_id"]
    event_id = _call(hs, "PUT", f"/rooms/{room_id}/send/m.room.message/t1", token,
                     {"msgtype": "m.text", "body": "on postgres"})["event_id"]
    fetched = _call(hs, "GET", f"/rooms/{room_id}/event/{event_id}", token)
    assert fetched["content"]["body"] == "on postgres"

    # The event is in PostgreSQL, and there is no SQLite database beside the config.
    assert pg.psql(f"SELECT count(*) FROM events WHERE event_id = '{event_id}'",
                   "synapse").strip() == "1"
    assert not (hs.workdir / "homeserver.db").exists()

    hs.restart()  # the login and the message outlive Synapse's restart
    fetched = _call(hs, "GET", f"/rooms/{room_id}/event/{event_id}", token)
    assert fetched["event_id"] == event_id
