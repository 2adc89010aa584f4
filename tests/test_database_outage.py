"""The database itself down: the bot on a PostgreSQL server of the test's own, with
messages due, and the server crashed (``pg_ctl stop -m immediate``) for a while, then
started again. Lethe keeps running and says the database is unavailable (never its
password); once it is back every message is redacted, none twice, and messages sent
during the outage are redacted too: the sync that brought them was not acknowledged
(its token not stored) while nothing of it could be committed.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit

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
    own_postgres, people, synapse, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    url = own_postgres.create("lethe_outage")
    config = write_bot_config(synapse, tmp_path / "bot", database=url)
    assert not config.database.is_sqlite
    handle = BotHandle(config)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(handle.stop)
        alice = await people("alice")
        await handle.start()
        room = await plain_room(alice, config.bot.user_id, 3000)
        assert handle.bot is not None and handle.task is not None
        engine = handle.bot.engine

        before = await send_raw(alice, room, BEFORE)

        async def tracked() -> bool:
            return await engine.tracked(before) == set(before)

        # Tracked before the database goes, so they come due while it is down.
        await eventually(tracked, 30, what="the bot tracking the messages")
        own_postgres.stop(mode="immediate")
        try:
            # Sent while the database is down: the sync that brings them cannot be
            # stored, so only a sync after the outage (from the old token) tracks them.
            during = await send_raw(alice, room, DURING)
            for _ in range(OUTAGE_S):
                await asyncio.sleep(1)
                assert not handle.task.done(), "the bot exited during the database outage"
            # What came during the outage cannot be on a schedule yet.
            seen = await redactions(alice, room)
            assert not [t for t in during if t in seen]
        finally:
            own_postgres.start()

        targets = before + during
        await eventually(lambda: all_redacted(alice, room, targets), 120, interval=1,
                         what="every message redacted after the database outage")

        async def confirmed() -> bool:
            return not await engine.tracked(targets)

        await eventually(confirmed, 60, interval=0.5,
                         what="every redaction confirmed, no row left in flight")
        assert not handle.task.done()
        assert handle.bot.engine.scheduler_alive

    seen = await redactions(alice, room)
    twice = {t: len(seen.get(t, [])) for t in targets if len(seen.get(t, [])) != 1}
    assert twice == {}, f"not redacted exactly once: {twice}"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert set(targets) <= set(lag_lines(logged, room)), "a redaction without its lag in the log"
    assert "the database is unavailable" in logged
    assert "the database is back after" in logged
    assert "homeserver is back" not in logged, "the homeserver never went away"
    assert "the sync is not stored" in logged
    password = urlsplit(url).password
    assert password and password not in logged
    shown = "\n".join(r.getMessage() for r in caplog.records if shown_by_cli(r))
    assert "Traceback" not in shown
    assert_no_secrets(shown, config)
