"""Receipts on events Lethe does not track (state events, messages sent while the
policy was off, redacted ones) count, across restarts too; the positions kept for
them stay bounded."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from bot.engine import ingest
from bot.engine.model import Marker, MemberChange, Message, PolicyEvent, Receipt, TimelineItem
from bot.engine.policy import Policy
from bot.engine.store import receipts as receipts_store

from .conftest import ALICE, BOB, CAROL, ROOM, T0, Harness, TestClock

TIMER = 60_000
CAP = 7 * 24 * 3600 * 1000


async def _room(h: Harness) -> None:
    """alice and bob in an after_read room: bob must read alice's messages."""
    await h.ingest(
        MemberChange(ALICE, True, "$join-alice"),
        MemberChange(BOB, True, "$join-bob"),
        h.policy_event(Policy.after_read(TIMER, CAP)),
    )


async def _positions(h: Harness, room: str = ROOM) -> int:
    async with h.store.conn.execute(
        "SELECT count(*) FROM positions WHERE room_id = ?", (room,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _topic(h: Harness) -> list[TimelineItem]:
    return [Marker("$after")]


def _join(h: Harness) -> list[TimelineItem]:
    # carol joins after the message, so she is not one of its readers.
    return [MemberChange(CAROL, True, "$after")]


def _untracked(h: Harness) -> list[TimelineItem]:
    off = PolicyEvent("chat.lethe.policy", ALICE, h.now(), Policy.off().to_state(),
                      event_id="$off")
    return [off, Message("$after", ALICE, h.now())]


def _redacted(h: Harness) -> list[TimelineItem]:
    # Tracked under a short after_send policy and redacted before the restart: its row
    # in events is gone, its position is not.
    quick = h.policy_event(Policy.after_send(1_000))
    return [quick, Message("$after", ALICE, h.now())]


@pytest.mark.parametrize("after", [_topic, _join, _untracked, _redacted],
                         ids=["state", "member", "untracked", "redacted"])
async def test_receipt_on_an_untracked_event_counts_after_a_restart(
    make_harness, after: Callable[[Harness], list[TimelineItem]]
) -> None:
    first: Harness = await make_harness()
    await _room(first)
    await first.ingest(Message("$m1", ALICE, first.now()))
    await first.ingest(*after(first))
    await first.advance(2_000)
    assert "$after" not in await first.event_ids()
    await first.close()

    clock = TestClock(T0 + 10 * TIMER)
    second: Harness = await make_harness(clock=clock)
    read = clock.now_ms()
    await second.receipts(Receipt(BOB, "$after"))
    row = await second.event("$m1")
    assert row is not None and row["read_at"] == read
    assert row["due_at"] == read + TIMER, "due at read time + timer, not at the cap"
    await second.advance(TIMER - 1)
    assert "$m1" not in second.transport.redacted_ids()
    await second.advance(1)
    assert "$m1" in second.transport.redacted_ids()


async def test_receipt_on_an_event_never_seen_is_logged(h: Harness, caplog) -> None:
    await _room(h)
    await h.ingest(Message("$m1", ALICE, h.now()))
    with caplog.at_level(logging.DEBUG, logger="bot.engine.ingest"):
        await h.receipts(Receipt(BOB, "$never-seen"))
    [record] = [r for r in caplog.records if "$never-seen" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert ROOM in record.getMessage()
    assert (await h.event("$m1"))["read_at"] is None


async def test_positions_stay_bounded_once_redacted(h: Harness) -> None:
    """2,000 messages and state events, each redacted: a single position is left."""
    await _room(h)
    for batch in range(20):
        t = h.now()
        await h.ingest(*(
            item
            for i in range(50)
            for item in (Message(f"$m{batch}-{i}", ALICE, t), Marker(f"$s{batch}-{i}"))
        ))
        await h.receipts(Receipt(BOB, f"$s{batch}-49"))
        assert await _positions(h) <= 101
        await h.advance(TIMER)
    assert len(h.transport.redacted_ids()) == 1_000
    assert await h.event_ids() == set()
    assert await _positions(h) == 1, "nothing unread: only the newest position stays"


async def test_pruning_keeps_what_covers_an_unread_message(make_harness) -> None:
    first: Harness = await make_harness()
    await _room(first)
    await first.ingest(*(Marker(f"$before{i}") for i in range(100)))
    await first.ingest(Message("$m1", ALICE, first.now()))
    for batch in range(10):
        await first.ingest(*(Marker(f"$s{batch}-{i}") for i in range(100)))
        await first.ingest(Message(f"$read{batch}", ALICE, first.now()))
    # Everything from $m1 on is kept (1 + 10 * 101), nothing before it.
    assert await _positions(first) == 1 + 10 * 101
    await first.close()

    second: Harness = await make_harness(clock=TestClock(T0 + TIMER))
    await second.receipts(Receipt(BOB, "$before99"))
    assert (await second.event("$m1"))["read_at"] is None
    read = second.now()
    await second.receipts(Receipt(BOB, "$s0-0"))
    assert (await second.event("$m1"))["read_at"] == read
    # Now nothing before $read0 is unread: what lay before it goes.
    assert await _positions(second) == 10 * 101 - 100


async def test_the_per_room_cap_holds(make_harness, monkeypatch) -> None:
    monkeypatch.setattr(ingest, "_POSITIONS_PER_ROOM", 300)
    monkeypatch.setattr(ingest, "_CAP_CHECK_EVERY", 100)
    h: Harness = await make_harness()
    await _room(h)
    await h.ingest(Message("$m1", ALICE, h.now()))
    for batch in range(30):
        await h.ingest(*(Marker(f"$s{batch}-{i}") for i in range(40)))
        assert await _positions(h) <= 300 + 100
    # A tracked message is found in events even when its position went.
    await h.receipts(Receipt(BOB, "$m1"))
    assert (await h.event("$m1"))["read_at"] == h.now()


async def test_forgetting_a_room_drops_its_positions(h: Harness) -> None:
    await _room(h)
    await h.ingest(Message("$m1", ALICE, h.now()), Marker("$s1"))
    await h.ingest(Marker("$s2"), room="!other:x")
    assert await _positions(h) == 2
    assert h.engine is not None
    await h.engine.forget_room(ROOM)
    assert await _positions(h) == 0
    assert await _positions(h, "!other:x") == 1


async def test_with_nothing_unread_only_what_is_kept_is_written(h: Harness, monkeypatch) -> None:
    """Nothing unread (the batch included): the pruning would keep only the newest
    position, so only it is written, and any a receipt in the same update names, which
    still counts. With an unread message every position is written."""
    written: list[str] = []
    real = receipts_store.insert_positions

    async def spy(conn: object, rows: list[tuple[str, str, int]]) -> None:
        written.extend(row[1] for row in rows)
        await real(conn, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(receipts_store, "insert_positions", spy)
    await _room(h)
    await h.ingest(Message("$m1", ALICE, h.now()), receipts=(Receipt(BOB, "$m1"),))
    assert (await h.event("$m1"))["read_at"] is not None
    written.clear()
    await h.ingest(*(Marker(f"$s{i}") for i in range(10)), receipts=(Receipt(BOB, "$s3"),))
    assert written == ["$s3", "$s9"]
    async with h.store.conn.execute(
        "SELECT r.seq, p.seq FROM receipts AS r, positions AS p WHERE r.user_id = ? "
        "AND p.event_id = ?", (BOB, "$s9")) as cur:
        [(receipt_seq, newest)] = [tuple(row) for row in await cur.fetchall()]
    assert receipt_seq == newest - 6, "bob's receipt moved to $s3"
    assert await _positions(h) == 1
    written.clear()
    await h.ingest(Message("$m2", ALICE, h.now()), *(Marker(f"$t{i}") for i in range(5)))
    assert written == ["$m2", *(f"$t{i}" for i in range(5))], "$m2 is unread: all kept"
