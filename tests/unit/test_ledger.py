"""The erasure ledger: every redaction of Lethe's own that it confirms is entered
(ids and a time, in the confirming transaction), nobody else's is, and entries are
forgotten after the ledger period: on start, and with later redactions at most
hourly (never on a timer of its own)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.engine.engine import EngineConfig
from bot.engine.model import Erasure, Message, Redaction
from bot.engine.policy import Policy
from bot.engine.store import MIGRATIONS, SCHEMA_VERSION, Database, Store
from bot.engine.store.opening import open_store

from .conftest import ALICE, BOB, BOT, ROOM, Harness, TestClock, eventually

M = 60_000
HOUR = 3_600_000
DAY = 24 * HOUR


async def _expire(h: Harness, *event_ids: str) -> int:
    """Track messages under after_send 1m and let the engine redact them; returns when."""
    await h.set_policy(Policy.after_send(M))
    await h.ingest(*(Message(e, ALICE, h.now()) for e in event_ids))
    await h.advance(M)
    assert await h.event_ids() == set(), "not all redacted"
    return h.now()


async def test_a_confirmed_redaction_is_entered_with_its_time(h: Harness) -> None:
    at = await _expire(h, "$m1", "$m2")
    assert await h.store.ledger(ROOM) == [Erasure(ROOM, "$m1", at), Erasure(ROOM, "$m2", at)]
    assert await h.store.ledger(ROOM, since_ms=at + 1) == []
    assert await h.store.ledger("!other:x") == []
    room = await h.room_row()
    assert room["redacted_count"] == 2


async def test_the_echo_path_enters_it_too_and_nobody_elses_redaction_does(
    make_harness,
) -> None:
    h = await make_harness(config=EngineConfig(bot_user_id=BOT, echo_wait_ms=10_000))
    await h.set_policy(Policy.after_send(M))
    sent = h.now()
    await h.ingest(Message("$first", ALICE, sent), Message("$second", BOB, sent),
                   Message("$theirs", BOB, sent))
    # Bob deletes his own message before it is due: not Lethe's erasure.
    await h.ingest(Redaction("$theirs", "$bobs-redaction", BOB))
    await h.advance(M)  # the first in a room is fetched; the second waits for its echo
    assert [e.event_id for e in await h.store.ledger(ROOM)] == ["$first"]
    await h.ingest(h.transport.echo("$second"))
    ledger = {e.event_id for e in await h.store.ledger(ROOM)}
    assert "$second" in ledger and "$theirs" not in ledger
    assert await h.event_ids() == set()


async def test_entries_are_forgotten_after_the_ledger_period(make_harness, db_path) -> None:
    config = EngineConfig(bot_user_id=BOT, ledger_ms=DAY)
    h = await make_harness(config=config)
    await _expire(h, "$old")  # prunes (the first since start) and enters $old
    await h.advance(12 * HOUR)
    young = await _expire(h, "$young")  # prunes again: $old is half a period old
    await h.advance(DAY - 12 * HOUR)  # $old is a period and a minute old...
    assert {e.event_id for e in await h.store.ledger(ROOM)} == {"$old", "$young"}
    # ...and goes with the next redaction (an hour or more after the last prune).
    await _expire(h, "$trigger")

    async def pruned() -> bool:
        return {e.event_id for e in await h.store.ledger(ROOM)} == {"$young", "$trigger"}

    await eventually(pruned, what="$old forgotten")
    assert await h.store.ledger_oldest() == young

    # A restart a period later prunes on start, with nothing redacted.
    await h.close()
    h2 = await make_harness(config=config, clock=TestClock(h.now() + DAY + M))
    assert await h2.store.ledger(ROOM) == []


async def test_pruning_is_at_most_hourly(make_harness) -> None:
    h = await make_harness(config=EngineConfig(bot_user_id=BOT, ledger_ms=HOUR))
    await _expire(h, "$a")
    await h.advance(HOUR + M)  # $a is older than the period now
    await _expire(h, "$b")  # pruned: the last prune was at start, over an hour ago
    await eventually(lambda: _ids(h, {"$b"}), what="$a forgotten")
    await h.advance(HOUR - 5 * M)
    await _expire(h, "$c")  # $b is over the period old, but the last prune is recent
    assert await _ids(h, {"$b", "$c"})
    await h.advance(5 * M)
    await _expire(h, "$d")
    await eventually(lambda: _ids(h, {"$c", "$d"}), what="$b forgotten")


async def _ids(h: Harness, expected: set[str]) -> bool:
    return {e.event_id for e in await h.store.ledger(ROOM)} == expected


async def test_the_sample_is_the_oldest_and_the_newest(database: Database) -> None:
    store = await open_store(database)
    try:
        # Entries go in only with a confirmation; here straight into the table, for times.
        async with store.transaction():
            await store.conn.executemany(
                "INSERT INTO erasures (room_id, event_id, redacted_at) VALUES (?, ?, ?)",
                [(ROOM, f"$e{i}", 1000 + i) for i in range(10)])
        assert [e.event_id for e in await store.ledger_sample(2)] == ["$e0", "$e1", "$e8", "$e9"]
        assert len(await store.ledger_sample(20)) == 10
        assert await store.ledger_oldest() == 1000
    finally:
        await store.close()


async def test_a_database_of_the_previous_version_gets_an_empty_ledger(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION - 1,))
    for statement in (s for migration in MIGRATIONS[:-1] for s in migration):
        conn.execute(statement)
    conn.commit()
    conn.close()
    store = await Store.open(db_path)
    try:
        assert await store.ledger(ROOM) == [] and await store.ledger_oldest() is None
        async with store.transaction() as tx:
            assert await tx.prune_ledger(10**15) == 0
    finally:
        await store.close()
