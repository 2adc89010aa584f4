"""No remote clock decides a deadline alone: origin_server_ts and receipt ts are
bounded by Lethe's own clock (sendtimes.MAX_SKEW_MS), a message's read time is its
last required reader's whatever order receipts come in, floods are claimed fairly
across rooms, and a receipt costs what it newly covers."""

from __future__ import annotations

import pytest

from bot.engine.engine import EngineConfig
from bot.engine.model import MemberChange, Message, Receipt, RoomUpdate
from bot.engine.policy import Policy
from bot.engine.sendtimes import MAX_SKEW_MS

from .conftest import ALICE, BOB, BOT, CAROL, ROOM, T0, Harness, TestClock

S = 1_000
M = 60 * S
H = 60 * M
TIMER = 10 * S
CAP = 24 * H
EVE = "@eve:remote.example"  # on another homeserver than the bot (@bot:x)
ROOM_B = "!b:x"


async def _after_read_room(h: Harness, *members: str) -> None:
    joins = [MemberChange(user, True, f"$join-{user}") for user in members]
    await h.ingest(*joins, h.policy_event(Policy.after_read(TIMER, CAP)))


async def _row(h: Harness, event_id: str) -> dict:
    row = await h.event(event_id)
    assert row is not None, f"{event_id} is not tracked"
    return row


# --- origin_server_ts ---------------------------------------------------------------


async def test_a_message_stamped_in_the_future_counts_as_sent_when_seen(h: Harness) -> None:
    """A remote server 1 h fast, or a forged 2^53-1: redacted T after Lethe saw it, not
    an hour later, or never."""
    await h.set_policy(Policy.after_send(TIMER))
    seen = h.now()
    await h.ingest(Message("$fast", EVE, seen + H), Message("$forged", EVE, 2**53 - 1))
    for event_id in ("$fast", "$forged"):
        row = await _row(h, event_id)
        assert (row["sent_at"], row["due_at"]) == (seen, seen + TIMER), event_id
    await h.advance(TIMER - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert sorted(h.transport.redacted_ids()) == ["$fast", "$forged"]
    assert h.engine is not None and h.engine._scheduler.last_lag_ms == 0


async def test_a_backdated_live_message_counts_at_most_the_skew_before_the_last_batch(
    h: Harness,
) -> None:
    """Stamped 0 (or by a clock far behind) while Lethe is looking: it counts as sent
    MAX_SKEW_MS before the previous batch, not in 1970, so it is not due at once."""
    await h.set_policy(Policy.after_send(H))
    previous = h.now()
    await h.advance(5 * S)
    await h.ingest(Message("$zero", EVE, 0), Message("$slow", EVE, h.now() - 10 * M))
    for event_id in ("$zero", "$slow"):
        row = await _row(h, event_id)
        assert row["origin_ts"] < previous - MAX_SKEW_MS, "origin_ts stays what it says"
        assert row["due_at"] == previous - MAX_SKEW_MS + H, event_id
    assert h.transport.redact_calls == []
    await h.advance(H - MAX_SKEW_MS - 5 * S)
    assert sorted(h.transport.redacted_ids()) == ["$slow", "$zero"]


async def test_messages_sent_while_lethe_was_stopped_keep_their_own_time(make_harness) -> None:
    """Catch-up: the previous batch is from before the downtime, so what was sent
    meanwhile is not clamped, and what is overdue goes at once."""
    first: Harness = await make_harness()
    await first.set_policy(Policy.after_send(10 * M))
    await first.close()
    second: Harness = await make_harness(clock=TestClock(T0 + H))
    await second.ingest(
        Message("$old", ALICE, T0 + 5 * M), Message("$recent", EVE, T0 + H - 5 * M)
    )
    assert second.transport.redacted_ids() == ["$old"]
    assert (await _row(second, "$recent"))["due_at"] == T0 + H + 5 * M


async def test_a_backlog_in_several_batches_keeps_its_own_times(make_harness) -> None:
    """After downtime a homeserver pushes the bridge its queue 100 events at a time:
    the second batch's messages, sent during the downtime too, are not clamped to
    the first batch's arrival (their deadlines would slip by the whole downtime)."""
    first: Harness = await make_harness()
    await first.set_policy(Policy.after_send(10 * M))
    await first.close()
    second: Harness = await make_harness(clock=TestClock(T0 + H))
    await second.ingest(Message("$b1", ALICE, T0 + 30 * M))
    await second.advance(S)
    await second.ingest(Message("$b2", ALICE, T0 + 40 * M))
    assert sorted(second.transport.redacted_ids()) == ["$b1", "$b2"]  # both overdue


# --- receipts -----------------------------------------------------------------------


async def test_a_remote_receipt_counts_when_it_arrives(h: Harness) -> None:
    """A receipt stamped 0, or by a server 60 s slow, does not make the message due at
    once; and the lag is measured from the true deadline (0 here, not "56 s late")."""
    await _after_read_room(h, ALICE, EVE)
    await h.ingest(Message("$m1", ALICE, h.now()), Message("$m2", ALICE, h.now()))
    await h.advance(2 * S)
    await h.receipts(Receipt(EVE, "$m1", ts=0))
    arrived = h.now()
    assert ((await _row(h, "$m1"))["read_at"], (await _row(h, "$m1"))["due_at"]) == (
        arrived, arrived + TIMER)
    await h.advance(S)
    await h.receipts(Receipt(EVE, "$m2", ts=h.now() - 60 * S))
    assert (await _row(h, "$m2"))["due_at"] == h.now() + TIMER
    await h.advance(TIMER - S - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"]
    assert h.engine is not None and h.engine._scheduler.last_lag_ms == 0


async def test_read_time_is_the_last_required_readers_whatever_the_order(h: Harness) -> None:
    """The reported case: a local member read at +5 s; a remote member's receipt came
    later, stamped +0.07 s. Under after-read 10s the message went at +10.1 s; it must
    wait for 10 s after the last read, which is when the remote receipt arrived."""
    await _after_read_room(h, ALICE, BOB, EVE)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent), Message("$m2", ALICE, sent))
    await h.advance(5 * S)
    await h.receipts(Receipt(BOB, "$m1", ts=h.now()))
    await h.advance(2 * S)
    await h.receipts(Receipt(EVE, "$m1", ts=sent + 70))
    assert (await _row(h, "$m1"))["read_at"] == sent + 7 * S
    # The other order: the remote reader first, the local one last.
    await h.receipts(Receipt(EVE, "$m2", ts=sent + 70))
    await h.advance(S)
    await h.receipts(Receipt(BOB, "$m2", ts=h.now()))
    assert (await _row(h, "$m2"))["read_at"] == sent + 8 * S
    await h.advance(TIMER - S - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_a_batch_reads_each_message_at_its_own_last_readers_time(h: Harness) -> None:
    """Receipts delivered late in one batch: a message counts as read at its own last
    reader's time, not at the latest receipt of the batch (carol joined after $m1 and
    is no reader of it)."""
    await _after_read_room(h, ALICE, BOB)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent), MemberChange(CAROL, True, "$join-carol"))
    await h.advance(5 * S)
    await h.receipts(Receipt(BOB, "$m1", ts=sent + S), Receipt(CAROL, "$m1", ts=sent + 4 * S))
    assert (await _row(h, "$m1"))["read_at"] == sent + S


async def test_many_receipts_in_one_batch_count_as_one_at_a_time(make_harness, tmp_path) -> None:
    """Over 16 members' receipts in one room and batch are counted in one pass
    (reads.plan_cover_many): threads, senders, late joiners and earlier receipts on the
    other key come out as receipt by receipt, read at the batch's latest time."""
    readers = [f"@r{i:02d}:x" for i in range(24)]

    async def run(h: Harness, batches: list[list[Receipt]]) -> dict[str, tuple]:
        await _after_read_room(h, *readers[:20])
        sent = h.now()
        await h.ingest(
            Message("$a", readers[0], sent),
            Message("$root", readers[1], sent),
            Message("$t1", readers[2], sent, thread_id="$root"),
            MemberChange(readers[20], True, "$late-join"),
            Message("$b", readers[3], sent),
            Message("$t2", readers[4], sent, thread_id="$root"),
        )
        await h.receipts(Receipt(readers[5], "$t1", thread_id="$root"))
        await h.advance(S)
        for batch in batches:
            await h.receipts(*batch)
        async with h.store.conn.execute(
            "SELECT event_id, readers_left, read_at IS NOT NULL FROM events ORDER BY seq"
        ) as cur:
            return {row[0]: tuple(row[1:]) for row in await cur.fetchall()}

    receipts = [Receipt(r, "$b") for r in readers[:18]] + [
        Receipt(readers[18], "$root", thread_id="main"),
        Receipt(readers[19], "$t2", thread_id="$root"),
        Receipt(readers[20], "$t2"),
        Receipt(readers[18], "$b"),
        Receipt(readers[19], "$b"),
    ]
    one_batch = await run(await make_harness(path=tmp_path / "bulk.db"), [receipts])
    in_turn = await run(await make_harness(path=tmp_path / "turn.db"), [[r] for r in receipts])
    assert one_batch == in_turn
    assert one_batch["$a"] == (0, 1) and one_batch["$b"] == (0, 1)
    assert one_batch["$t2"] == (18, 0)


# --- claiming ----------------------------------------------------------------------


async def test_a_flood_in_one_room_does_not_hold_back_another(h: Harness) -> None:
    """300 messages due in one room (backdated: stamped 0) and one in another, all due at
    once: the other room's message is among the first claimed, not the 301st."""
    await h.set_policy(Policy.after_send(10 * M))
    await h.set_policy(Policy.after_send(10 * M), room=ROOM_B)
    assert h.engine is not None
    await h.engine.ingest([
        RoomUpdate(ROOM, tuple(Message(f"$flood{i}", EVE, 0) for i in range(300))),
        RoomUpdate(ROOM_B, (Message("$b", BOB, h.now()),)),
    ])
    await h.settle()
    assert h.transport.redact_calls == []
    await h.advance(10 * M)
    redacted = h.transport.redacted_ids()
    assert len(redacted) == 301
    workers = h.engine.config.workers
    assert redacted.index("$b") < 2 * workers, redacted.index("$b")


# --- cost --------------------------------------------------------------------------


async def _receipt_steps(h: Harness, members: int, events: int) -> int:
    """SQLite VM steps (in thousands) of one receipt that makes ``events`` messages read
    in a room where every other reader has read them already."""
    readers = [f"@m{i:04d}:x" for i in range(members)]
    await _after_read_room(h, ALICE, *readers)
    await h.ingest(*(Message(f"$e{i}", ALICE, h.now()) for i in range(events)))
    await h.receipts(*(Receipt(r, f"$e{events - 1}") for r in readers[:-1]))
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    await h.store.conn.set_progress_handler(count, 1000)
    await h.receipts(Receipt(readers[-1], f"$e{events - 1}"))
    await h.store.conn.set_progress_handler(None, 1000)
    async with h.store.conn.execute(
        "SELECT count(*) FROM events WHERE read_at IS NOT NULL"
    ) as cur:
        row = await cur.fetchone()
    assert row is not None and row[0] == events
    return steps


@pytest.mark.sqlite_only  # reads SQLite's own machinery
async def test_a_receipt_costs_what_it_covers_not_members_times_events(
    make_harness, tmp_path
) -> None:
    small = await _receipt_steps(await make_harness(path=tmp_path / "s.db"), 20, 200)
    large = await _receipt_steps(await make_harness(path=tmp_path / "l.db"), 200, 200)
    assert large <= 2 * small + 5, (small, large)


async def test_bot_is_not_a_reader(make_harness) -> None:
    """Sanity for the counts: the bot and ignored users are not counted as readers."""
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, ignore_readers=("@i*",)))
    await _after_read_room(h, ALICE, BOB, BOT, "@ignored:x")
    await h.ingest(Message("$m1", ALICE, h.now()))
    assert (await _row(h, "$m1"))["readers_left"] == 1
    await h.receipts(Receipt(BOB, "$m1"))
    assert (await _row(h, "$m1"))["read_at"] == h.now()
