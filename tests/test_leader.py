"""The standby's lock on a real PostgreSQL server (store/leader.py, bot/lifecycle.py):
one active process per role and schema, the lock lost with its connection and never
written past, a standby that takes over, and who holds it."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.cli.leader import holder_json, holder_text
from bot.devtools.localpostgres import LocalPostgres
from bot.engine.store import (
    Database,
    Leader,
    LeadershipLost,
    NotLeader,
    database_unavailable,
    lock_holder,
    open_store,
)
from bot.lifecycle import FrontLife
from tests.conftest import pg_database


class _Front:
    engine = None
    tracked_total = 0
    sync_alive = False
    scheduler_alive = False


async def _backend_pid(store: object) -> int:
    raw = await store.conn.raw()  # type: ignore[attr-defined]
    return int(await raw.fetchval("SELECT pg_backend_pid()"))


async def test_one_active_per_role_and_schema(postgres: LocalPostgres) -> None:
    database = pg_database(postgres)
    first = await open_store(database, on_connect=Leader("bridge").on_connect)
    try:
        with pytest.raises(NotLeader) as refused:
            await open_store(database, on_connect=Leader("bridge").on_connect)
        assert database_unavailable(refused.value)  # a push gets 503, not a drop
        # A bot on the same schema, and a bridge on another, are not in the way.
        bot = await open_store(database, on_connect=Leader("bot").on_connect)
        other = await open_store(pg_database(postgres), on_connect=Leader("bridge").on_connect)
        await bot.close()
        await other.close()
        holder = await lock_holder(database, "bridge")
        assert holder is not None and holder.application_name.startswith("lethe bridge on ")
        assert holder.client.startswith("127.0.0.1:")
        text = holder_text(holder, "bridge")  # as `lethe bridge status` says it
        assert text.startswith("held by lethe bridge on ") and "ago" in text, text
        assert holder_json(holder) is not None
        assert await lock_holder(database, "bot") is None
        assert holder_text(None, "bot").startswith("no lethe bot holds the lock")
    finally:
        await first.close()
    assert await lock_holder(database, "bridge") is None


async def test_a_lost_connection_is_a_lost_leadership_and_nothing_is_written(
    postgres: LocalPostgres,
) -> None:
    database = pg_database(postgres)
    leader = Leader("bridge")
    active = await open_store(database, on_connect=leader.on_connect)
    postgres.psql(f"SELECT pg_terminate_backend({await _backend_pid(active)})", "lethe_tests")
    await asyncio.wait_for(leader.lost.wait(), 10)
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(leader.watch(), 1)
    taker = await open_store(database, on_connect=Leader("bridge").on_connect)
    try:
        # The old store reconnects on its next statement, and refuses to go on: the
        # lock is another's now, and even were it free, its memory may be stale.
        with pytest.raises(LeadershipLost):
            async with active.transaction() as tx:
                await tx.set_meta("written_after_loss", "yes")
        assert await taker.get_meta("written_after_loss") is None
    finally:
        await active.close()
        await taker.close()


async def test_a_standby_waits_then_takes_over(postgres: LocalPostgres) -> None:
    database: Database = pg_database(postgres)
    active = FrontLife()
    await active.lead(database, "bot", None, _Front())
    standby = FrontLife()
    waiting = asyncio.create_task(standby.lead(database, "bot", None, _Front()))
    try:
        await asyncio.sleep(1.5)
        assert not waiting.done() and standby.role == "standby"
        stopped_at = time.monotonic()
        await active.stop()
        await asyncio.wait_for(waiting, 10)
        print(f"standby led {time.monotonic() - stopped_at:.2f} s after the active stopped")
        assert standby.role == "starting"
        holder = await lock_holder(database, "bot")
        assert holder is not None
    finally:
        waiting.cancel()
        await standby.stop()


async def test_a_stop_ends_a_standby_s_wait(postgres: LocalPostgres) -> None:
    database = pg_database(postgres)
    active = FrontLife()
    await active.lead(database, "bridge", None, _Front())
    standby = FrontLife()
    stop = asyncio.Event()
    stopped = asyncio.Event()

    async def on_stop() -> None:
        await standby.stop()
        stopped.set()

    running = asyncio.create_task(standby.run_until(
        lambda: standby.lead(database, "bridge", None, _Front()), on_stop, stop))
    try:
        await asyncio.sleep(1.2)
        assert standby.role == "standby" and not running.done()
        stop.set()
        await asyncio.wait_for(running, 5)
        assert stopped.is_set()
    finally:
        await active.stop()
