"""The standby's lock on a real PostgreSQL server (store/leader.py, bot/lifecycle.py):
one active process per role and schema, the lock taken up again after a lost
connection only if nobody led meanwhile (and never written past otherwise), a standby
that takes over, and who holds it."""

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
from bot.engine.store.leader import lock_key
from bot.engine.store.postgres import connect
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


async def _lead(database: Database) -> tuple[Leader, object]:
    leader = Leader("bridge")
    store = await open_store(database, on_connect=leader.on_connect)
    await leader.begin(store)
    return leader, store


async def test_a_lost_connection_nobody_took_over_is_taken_up_again(
    postgres: LocalPostgres,
) -> None:
    database = pg_database(postgres)
    leader, active = await _lead(database)
    try:
        postgres.psql(f"SELECT pg_terminate_backend({await _backend_pid(active)})",
                      "lethe_tests")
        # The first statement finds the connection gone (an error the engine waits
        # out); the next reconnects, takes the lock again, finds its own epoch, and
        # goes on; a standby is kept out again.
        for attempt in range(2):
            try:
                async with active.transaction() as tx:  # type: ignore[attr-defined]
                    await tx.set_meta("written_after_reconnect", "yes")
                break
            except Exception as exc:
                assert attempt == 0 and database_unavailable(exc), exc
        assert not leader.lost.is_set()
        assert await active.get_meta("written_after_reconnect") == "yes"  # type: ignore[attr-defined]
        with pytest.raises(NotLeader):
            await open_store(database, on_connect=Leader("bridge").on_connect)
    finally:
        await active.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("taker_stays", [True, False])
async def test_a_lost_connection_another_led_meanwhile_is_a_lost_leadership(
    postgres: LocalPostgres, taker_stays: bool,
) -> None:
    """Another process led while the connection was away (and holds the lock still, or
    let it go): the old one must not write on; its memory may be stale."""
    database = pg_database(postgres)
    leader, active = await _lead(database)
    postgres.psql(f"SELECT pg_terminate_backend({await _backend_pid(active)})", "lethe_tests")
    _, taker = await _lead(database)
    if not taker_stays:
        await taker.close()  # type: ignore[attr-defined]
    try:
        with pytest.raises(LeadershipLost):
            async with active.transaction() as tx:  # type: ignore[attr-defined]
                await tx.set_meta("written_after_loss", "yes")
        assert leader.lost.is_set()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(leader.watch(), 1)
        reader = await open_store(database, readonly=True)
        assert await reader.get_meta("written_after_loss") is None
        await reader.close()
    finally:
        await active.close()  # type: ignore[attr-defined]
        if taker_stays:
            await taker.close()  # type: ignore[attr-defined]


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


async def test_a_leader_makes_its_lost_connection_again_at_once(postgres: LocalPostgres) -> None:
    """No statement needed: the leader's own task reconnects and takes the lock again
    (nobody else waited), or stops the run at once (a standby took it), so that /health
    never goes on saying active for a process that no longer is."""
    database = pg_database(postgres)
    alone = FrontLife()
    await alone.lead(database, "bot", None, _Front())
    try:
        before = await lock_holder(database, "bot")
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      "application_name LIKE 'lethe bot on %'", "lethe_tests")

        async def held_again() -> bool:
            holder = await lock_holder(database, "bot")
            return holder is not None and before is not None and holder.since > before.since

        deadline = time.monotonic() + 10
        while not await held_again():
            assert time.monotonic() < deadline, "the lock was not taken again"
            await asyncio.sleep(0.1)
        assert not any(task.done() for task in alone._tasks)
    finally:
        await alone.stop()

    # Another takes the lock the moment it goes (as a standby could): the leader's
    # reconnection finds it held and the run ends, with no statement of its own.
    active = FrontLife()
    await active.lead(database, "bot", None, _Front())
    taker = await connect(database)
    try:
        key = lock_key("bot", await taker.fetchval("SELECT current_schema()"))
        await taker.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            "application_name LIKE 'lethe bot on %'")
        await asyncio.wait_for(taker.execute("SELECT pg_advisory_lock($1::bigint)", key), 10)
        watch = active._tasks[0]
        await asyncio.wait_for(asyncio.wait([watch]), 10)
        assert isinstance(watch.exception(), LeadershipLost)
    finally:
        await taker.close()
        await active.stop()
