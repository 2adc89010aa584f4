"""Nothing is forgotten across a restart or a crash."""

from __future__ import annotations

import asyncio

from bot.engine.model import EventStatus, MemberChange, Message, Receipt
from bot.engine.policy import Policy
from bot.engine.redactor import Outcome, Reply

from .conftest import ALICE, BOB, ROOM, T0, FakeTransport, Harness, TestClock, eventually

M = 60_000


async def test_due_event_is_redacted_at_once_after_restart(make_harness) -> None:
    first: Harness = await make_harness()
    await first.set_policy(Policy.after_send(M))
    sent = first.now()
    await first.ingest(Message("$m1", ALICE, sent), meta={"sync_token": "s6"})
    await first.set_policy(Policy.after_send(10 * M))
    await first.ingest(Message("$m2", ALICE, sent), meta={"sync_token": "s7"})
    await first.close()
    assert first.transport.redact_calls == []

    later = TestClock(T0 + 5 * M)
    second: Harness = await make_harness(clock=later)
    assert second.engine is not None
    assert await second.engine.sync_token() == "s7"
    assert second.transport.redacted_ids() == ["$m1"]
    assert await second.event_ids() == {"$m2"}
    room = await second.engine.room(ROOM)
    assert room is not None and room.policy == Policy.after_send(10 * M)
    # The policy survives too: new messages are still tracked.
    await second.ingest(Message("$m3", BOB, later.now_ms()))
    assert await second.event_ids() == {"$m2", "$m3"}
    await second.advance(10 * M)
    assert sorted(second.transport.redacted_ids()) == ["$m1", "$m2", "$m3"]


async def test_read_positions_continue_after_restart(make_harness) -> None:
    first: Harness = await make_harness()
    await first.ingest(
        MemberChange(ALICE, True, "$ja"),
        MemberChange(BOB, True, "$jb"),
        first.policy_event(Policy.after_read(M, 24 * 60 * M)),
        Message("$m1", ALICE, first.now()),
    )
    await first.close()

    clock = TestClock(T0 + M)
    second: Harness = await make_harness(clock=clock)
    await second.ingest(Message("$m2", ALICE, clock.now_ms()))
    # A receipt on the new message covers the one from before the restart.
    await second.receipts(Receipt(BOB, "$m2"))
    for event_id in ("$m1", "$m2"):
        row = await second.event(event_id)
        assert row is not None and row["read_at"] == clock.now_ms(), event_id
    # Members were remembered: a receipt from alice alone did not do it.
    await second.ingest(Message("$m3", ALICE, clock.now_ms()))
    await second.receipts(Receipt(ALICE, "$m3"))
    assert (await second.event("$m3"))["read_at"] is None


async def test_in_flight_rows_of_a_crashed_process_are_redacted(make_harness) -> None:
    first: Harness = await make_harness()
    await first.set_policy(Policy.after_send(M))
    await first.ingest(Message("$m1", ALICE, first.now()))
    assert first.transport.redact_calls == []
    await first.close()
    # As a crash would leave it: claimed by a worker, never finished.
    with first.sync_db() as db:
        db.execute("UPDATE events SET status = ? WHERE event_id = '$m1'", (EventStatus.IN_FLIGHT,))
    db.close()

    second: Harness = await make_harness(clock=TestClock(T0 + 10 * M))
    await eventually(lambda: second.transport.redacted_ids() == ["$m1"])
    await second.settle()
    assert await second.event_ids() == set()
    assert (await second.room_row())["redacted_count"] == 1


async def test_crash_during_the_request_reuses_the_txn_id(make_harness) -> None:
    never = asyncio.Event()

    async def hang(*_: str) -> None:
        await never.wait()

    first: Harness = await make_harness()
    first.transport.on_redact = hang
    await first.set_policy(Policy.after_send(M))
    await first.ingest(Message("$m1", ALICE, first.now()), settle=False)
    first.clock.advance(M)
    await eventually(lambda: len(first.transport.redact_calls) == 1)
    txn_id = first.transport.redact_calls[0][3]
    await first.close()  # the process dies with the request outstanding

    row = (
        first.sync_db()
        .execute("SELECT status, txn_id, attempts FROM events WHERE event_id = '$m1'")
        .fetchone()
    )
    assert row == (EventStatus.IN_FLIGHT, txn_id, 1)

    transport = FakeTransport()
    second: Harness = await make_harness(clock=TestClock(T0 + 2 * M), transport=transport)
    await eventually(lambda: transport.redacted_ids() == ["$m1"])
    await second.settle()
    assert transport.check_calls[0] == (ROOM, "$m1", ALICE), "looked before sending again"
    assert transport.redact_calls[0][3] == txn_id, "same txn id: the server deduplicates"
    assert await second.event_ids() == set()


async def test_crash_after_the_request_worked_is_not_sent_again(make_harness) -> None:
    first: Harness = await make_harness()
    await first.set_policy(Policy.after_send(M))
    await first.ingest(Message("$m1", ALICE, first.now()))
    await first.close()
    with first.sync_db() as db:
        db.execute(
            "UPDATE events SET status = ?, txn_id = 'lethe.t1', attempts = 1 "
            "WHERE event_id = '$m1'",
            (EventStatus.IN_FLIGHT,),
        )
    db.close()

    transport = FakeTransport()
    transport.script_check("$m1", Reply(Outcome.REDACTED))
    second: Harness = await make_harness(clock=TestClock(T0 + 2 * M), transport=transport)
    await eventually(lambda: second.transport.check_calls)
    await second.settle()
    assert transport.redact_calls == []
    assert await second.event_ids() == set()
    assert (await second.room_row())["redacted_count"] == 1
