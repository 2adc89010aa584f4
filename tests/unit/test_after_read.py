"""after_read: required readers, receipts, threads and the cap."""

from __future__ import annotations

from bot.engine.engine import EngineConfig
from bot.engine.model import Marker, MemberChange, Message, Receipt
from bot.engine.policy import Policy, Readers

from .conftest import ALICE, BOB, BOT, CAROL, DAVE, ROOM, Harness

TIMER = 60_000
CAP = 24 * 3600 * 1000


async def _room(h: Harness, *members: str, readers: Readers = Readers.ALL) -> None:
    joins = [MemberChange(user, True, f"$join-{user}") for user in members]
    await h.ingest(*joins, h.policy_event(Policy.after_read(TIMER, CAP, readers)))


async def _read_at(h: Harness, event_id: str) -> int | None:
    row = await h.event(event_id)
    assert row is not None, f"{event_id} is not tracked"
    return row["read_at"]


async def _due(h: Harness, event_id: str) -> int:
    row = await h.event(event_id)
    assert row is not None, f"{event_id} is not tracked"
    return row["due_at"]


async def test_waits_for_every_reader_then_timer(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent))
    assert await _read_at(h, "$m1") is None
    assert await _due(h, "$m1") == sent + CAP

    await h.advance(10_000)
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m1") is None, "carol has not read it"
    await h.advance(10 * TIMER)
    assert h.transport.redact_calls == []

    read = h.now()
    await h.receipts(Receipt(CAROL, "$m1"))
    assert await _read_at(h, "$m1") == read
    assert await _due(h, "$m1") == read + TIMER
    await h.advance(TIMER - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"]
    assert await h.event_ids() == set()


async def test_both_receipts_in_one_batch(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL)
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.advance(5_000)
    read = h.now()
    await h.receipts(Receipt(BOB, "$m1"), Receipt(CAROL, "$m1"))
    assert await _due(h, "$m1") == read + TIMER


async def test_receipt_time_is_used_when_sane(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent))
    await h.advance(30_000)
    # Delivered late: the receipt's own time counts.
    await h.receipts(Receipt(BOB, "$m1", ts=sent + 1_000))
    assert await _due(h, "$m1") == sent + 1_000 + TIMER
    # A receipt claiming the future is clamped to now.
    await h.ingest(Message("$m2", ALICE, h.now()))
    now = h.now()
    await h.receipts(Receipt(BOB, "$m2", ts=now + 10 * CAP))
    assert await _due(h, "$m2") == now + TIMER


async def test_readers_any_needs_one_receipt(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL, readers=Readers.ANY)
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.advance(1_000)
    read = h.now()
    await h.receipts(Receipt(CAROL, "$m1"))
    assert await _read_at(h, "$m1") == read
    await h.advance(TIMER)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_readers_any_ignores_the_senders_own_receipt(h: Harness) -> None:
    await _room(h, ALICE, BOB, readers=Readers.ANY)
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.receipts(Receipt(ALICE, "$m1"))
    assert await _read_at(h, "$m1") is None


async def test_cap_applies_when_nobody_reads(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent))
    await h.advance(CAP - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_read_late_never_extends_past_cap(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent))
    h.clock.advance(CAP - 1_000)  # just before the cap, without letting it fire
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _due(h, "$m1") == sent + CAP


async def test_leaving_member_stops_being_required(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL)
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.receipts(Receipt(BOB, "$m1"))
    await h.advance(5_000)
    left = h.now()
    await h.ingest(MemberChange(CAROL, False, "$leave-carol"))
    assert await _read_at(h, "$m1") == left
    assert await _due(h, "$m1") == left + TIMER
    await h.advance(TIMER)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_receipt_on_later_event_covers_earlier_ones(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", ALICE, t), Marker("$state"))
    await h.ingest(Message("$m3", ALICE, t))
    # A receipt on an untracked state event still marks a position.
    await h.receipts(Receipt(BOB, "$state"))
    assert await _read_at(h, "$m1") == t
    assert await _read_at(h, "$m2") == t
    assert await _read_at(h, "$m3") is None


async def test_receipt_on_earlier_event_does_not_cover_later(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", ALICE, t))
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m1") == t
    assert await _read_at(h, "$m2") is None
    # Receipts only move forward: an older one later does not undo anything.
    await h.receipts(Receipt(BOB, "$m2"))
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m2") == t


async def _thread_room(h: Harness) -> int:
    await _room(h, ALICE, BOB)
    t = h.now()
    await h.ingest(
        Message("$root", ALICE, t),
        Message("$t1", ALICE, t, thread_id="$root", parent_id="$root"),
        Message("$main2", ALICE, t),
        Message("$t2", ALICE, t, thread_id="$root", parent_id="$root"),
        Message("$other", ALICE, t, thread_id="$root2"),
    )
    return t


async def test_threaded_receipt_covers_only_its_thread(h: Harness) -> None:
    t = await _thread_room(h)
    await h.receipts(Receipt(BOB, "$t2", thread_id="$root"))
    assert await _read_at(h, "$t1") == t
    assert await _read_at(h, "$t2") == t
    for main in ("$root", "$main2", "$other"):
        assert await _read_at(h, main) is None, main


async def test_main_receipt_covers_only_the_main_timeline(h: Harness) -> None:
    t = await _thread_room(h)
    await h.receipts(Receipt(BOB, "$other", thread_id="main"))
    assert await _read_at(h, "$root") == t
    assert await _read_at(h, "$main2") == t
    for threaded in ("$t1", "$t2", "$other"):
        assert await _read_at(h, threaded) is None, threaded


async def test_unthreaded_receipt_covers_everything_before_it(h: Harness) -> None:
    t = await _thread_room(h)
    await h.receipts(Receipt(BOB, "$other"))
    for event_id in ("$root", "$t1", "$main2", "$t2", "$other"):
        assert await _read_at(h, event_id) == t, event_id


async def test_receipts_from_non_members_and_for_unknown_events_are_ignored(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.receipts(Receipt(DAVE, "$m1"), Receipt(BOB, "$never-seen"))
    assert await _read_at(h, "$m1") is None
    async with h.store.conn.execute("SELECT count(*) FROM receipts WHERE user_id = ?", (BOB,)) as c:
        assert (await c.fetchone())[0] == 0
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m1") is not None


async def test_sender_bot_and_ignored_users_are_not_required(make_harness) -> None:
    ghost = "@telegram_123:x"
    h: Harness = await make_harness(
        config=EngineConfig(bot_user_id=BOT, ignore_readers=("@telegram_*:x",))
    )
    assert h.engine is not None
    await _room(h, ALICE, BOB, BOT, ghost)
    assert await h.store.members(ROOM) == {ALICE, BOB}, "the bot and ignored users never read"
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", BOB, t))
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m1") == t, "only bob had to read alice's message"
    assert await _read_at(h, "$m2") is None
    await h.receipts(Receipt(ALICE, "$m2"))
    assert await _read_at(h, "$m2") == t, "only alice had to read bob's message"


async def test_nobody_to_read_counts_as_read_when_sent(h: Harness) -> None:
    await _room(h, ALICE, BOT)
    sent = h.now()
    await h.ingest(Message("$m1", ALICE, sent))
    assert await _read_at(h, "$m1") == sent
    assert await _due(h, "$m1") == sent + TIMER
    await h.advance(TIMER)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_member_who_joins_after_the_message_is_not_required(h: Harness) -> None:
    await _room(h, ALICE, BOB)
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), MemberChange(CAROL, True, "$join-carol"))
    await h.ingest(Message("$m2", ALICE, t))
    await h.receipts(Receipt(BOB, "$m2"))
    assert await _read_at(h, "$m1") == t
    assert await _read_at(h, "$m2") is None, "carol was there for $m2"
    await h.receipts(Receipt(CAROL, "$m2"))
    assert await _read_at(h, "$m2") == t


async def test_rejoined_member_is_not_required_for_what_was_sent_while_away(h: Harness) -> None:
    await _room(h, ALICE, BOB, CAROL)
    t = h.now()
    await h.ingest(MemberChange(CAROL, False, "$leave"), Message("$m1", ALICE, t))
    await h.ingest(MemberChange(CAROL, True, "$rejoin"))
    await h.receipts(Receipt(BOB, "$m1"))
    assert await _read_at(h, "$m1") == t
