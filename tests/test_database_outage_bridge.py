"""The database unavailable under the bridge (another process holding its SQLite
file's write lock) while messages are due: the bridge keeps running; a transaction
pushed meanwhile is not acknowledged (503, so the homeserver sends it again) and not
recorded as done; once the database is back, everything, what was due and what was
sent during the outage, is redacted once. (On PostgreSQL a lost connection ends the
run, the standby's lock with it: test_standby.py.)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections import Counter
from pathlib import Path

from tests.harness import all_redacted, eventually
from tests.test_bridge import (  # noqa: F401 - the module's homeserver, as fixtures
    BridgeHandle,
    bridge_server,
    encrypted_room,
    push,
    redactions,
    synapse,
    target,
)

OUTAGE_S = 12


async def test_database_outage_under_the_bridge_acknowledges_nothing_uncommitted(
    bridge_server, people, tmp_path: Path, caplog  # noqa: F811
) -> None:
    caplog.set_level(logging.INFO)
    handle = BridgeHandle(bridge_server.config(
        tmp_path / "bridge", default_policy={"mode": "after_send", "timer": "3s"}))
    await handle.start()
    try:
        assert handle.bridge is not None and handle.bridge.engine is not None
        alice, _, room = await encrypted_room(people)
        before = [await alice.send(room, f"canary-bridge before the outage {i}")
                  for i in range(3)]
        await handle.tracked(*before)

        assert handle.config.database.path is not None
        locker = sqlite3.connect(handle.config.database.path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            during = [await alice.send(room, f"canary-bridge during the outage {i}")
                      for i in range(2)]
            # A push the bridge cannot store: not answered 200, so not acknowledged.
            txn = f"outage-{secrets.token_hex(4)}"
            message = {"type": "m.room.message", "room_id": room, "sender": alice.user_id,
                       "event_id": f"$outage{secrets.token_hex(8)}",
                       "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "x"}}
            status, body = await push(bridge_server, txn, {"events": [message]})
            assert status == 503, (status, body)
            for _ in range(OUTAGE_S):
                await asyncio.sleep(1)
                assert handle._task is not None and not handle._task.done(), \
                    "the bridge exited during the database outage"
        finally:
            locker.execute("ROLLBACK")
            locker.close()

        engine = handle.bridge.engine
        targets = before + during
        await eventually(all_redacted(alice, room, *targets), 120, interval=1,
                         what="everything redacted after the database outage")
        # The refused push was never recorded as done: its resend will be stored.
        assert not await engine._store.appservice_txn_done(txn)
        counts = Counter(target(r) for r in await redactions(alice, room))
        assert {t: counts[t] for t in targets} == dict.fromkeys(targets, 1)
    finally:
        await handle.stop()
    assert "not stored" in caplog.text
