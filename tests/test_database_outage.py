"""The database itself unavailable under a running bot with messages due.

SQLite (another process holding the file's write lock for a while): the bot keeps
running and says the database is unavailable; once it can write again every message
is redacted, none twice, and messages sent meanwhile too: the sync that brought them
was not acknowledged (its token not stored) while nothing of it could be committed.

PostgreSQL (the server crashed, ``pg_ctl stop -m immediate``): the connection, and
with it the leader lock (bot/engine/store/leader.py), is gone; the bot keeps running,
tries again, and once the server is back takes the lock again (nobody else led
meanwhile) and redacts everything, those sent during the outage too, each exactly
once, without the password in anything it logs.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from bot.devtools.localpostgres import LocalPostgres
from tests.harness import BotHandle, eventually, write_bot_config
from tests.test_faults import (
    all_redacted,
    assert_no_secrets,
    lag_lines,
    plain_room,
    redactions,
    send_raw,
)
from tests.test_restart_privacy import shown_by_cli

OUTAGE_S = 15
BEFORE = 10
DURING = 5


async def test_database_outage_delays_but_loses_nothing_and_redacts_nothing_twice(
    backend, request, people, synapse, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    pg: LocalPostgres | None = None
    overrides = {}
    if backend == "postgresql":
        pg = request.getfixturevalue("own_postgres")
        overrides["database"] = pg.create("lethe_outage")
    config = write_bot_config(synapse, tmp_path / "bot", **overrides)
    handle = BotHandle(config)
    try:
        alice = await people("alice")
        await handle.start()
        room = await plain_room(alice, config.bot.user_id, 3000)
        assert handle.bot is not None and handle.task is not None
        engine = handle.bot.engine
        before = await send_raw(alice, room, BEFORE)

        async def tracked() -> bool:
            return await engine.tracked(before) == set(before)

        # Tracked before the database goes, so they come due while it is away.
        await eventually(tracked, 30, what="the bot tracking the messages")
        locker = None
        if pg is not None:
            pg.stop(mode="immediate")
        else:
            assert config.database.path is not None
            locker = sqlite3.connect(config.database.path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
        try:
            # Sent while the database is away: the sync that brings them cannot be
            # stored, so only a sync after the outage (from the old token) tracks them.
            during = await send_raw(alice, room, DURING)
            for _ in range(OUTAGE_S):
                await asyncio.sleep(1)
                assert not handle.task.done(), "the bot exited during the database outage"
            # What came during the outage cannot be on a schedule yet.
            seen = await redactions(alice, room)
            assert not [t for t in during if t in seen]
        finally:
            if pg is not None:
                pg.start()
            if locker is not None:
                locker.execute("ROLLBACK")
                locker.close()

        targets = before + during
        await eventually(lambda: all_redacted(alice, room, targets), 120, interval=1,
                         what="every message redacted after the database outage")

        async def confirmed() -> bool:
            return not await engine.tracked(targets)

        await eventually(confirmed, 60, interval=0.5,
                         what="every redaction confirmed, no row left in flight")
        assert not handle.task.done()
        assert engine.scheduler_alive
    finally:
        await handle.stop()

    seen = await redactions(alice, room)
    twice = {t: len(seen.get(t, [])) for t in targets if len(seen.get(t, [])) != 1}
    assert twice == {}, f"not redacted exactly once: {twice}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert set(targets) <= set(lag_lines(logged, room)), "a redaction without its lag in the log"
    if pg is None:
        assert "the database is unavailable (OperationalError)" in logged
        assert "the database is back after" in logged
        assert "the sync is not stored" in logged
        assert "homeserver is back" not in logged, "the homeserver never went away"
    else:
        # The lock went with the connection; nobody else led, so it was taken again.
        assert "this process still leads" in logged
        password = urlsplit(overrides["database"]).password
        assert password and password not in logged
    shown = "\n".join(r.getMessage() for r in caplog.records if shown_by_cli(r))
    assert "Traceback" not in shown
    assert_no_secrets(shown, config)
