"""Ingest and the scheduler through the Engine: after_send, policy changes, meta."""

from __future__ import annotations

import pytest

from bot.engine.model import EventStatus, Marker, Message, PolicyEvent
from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, Policy, Readers

from .conftest import ADMIN, ALICE, BOB, BOT, ROOM, Harness

M = 60_000


async def test_after_send_due_at_origin_plus_timer(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    sent = h.now()
    result = await h.ingest(Message("$m1", ALICE, sent))
    assert result.tracked == 1
    row = await h.event("$m1")
    assert row is not None
    assert (row["due_at"], row["status"], row["sender"]) == (sent + M, EventStatus.WAITING, ALICE)

    await h.advance(M - 1)
    assert h.transport.redact_calls == []
    assert await h.event("$m1") is not None

    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"]
    room, event_id, sender, txn_id = h.transport.redact_calls[0]
    assert (room, event_id, sender) == (ROOM, "$m1", ALICE)
    assert txn_id
    assert await h.event("$m1") is None, "verified rows are deleted"
    assert (await h.room_row())["redacted_count"] == 1
    assert h.engine is not None and h.engine.stats.done == 1


async def test_due_time_follows_origin_ts_not_arrival(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    # Arrives late (after a sync gap): already due, goes at once.
    await h.ingest(Message("$old", ALICE, h.now() - 2 * M), Message("$new", BOB, h.now()))
    assert h.transport.redacted_ids() == ["$old"]
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$old", "$new"]
    assert (await h.room_row())["redacted_count"] == 2
    assert await h.event_ids() == set()


async def test_several_messages_in_due_order(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    t = h.now() - 20_000  # stamps in the past: a message cannot be sent after it arrived
    await h.ingest(
        Message("$a", ALICE, t), Message("$b", BOB, t + 20_000), Message("$c", BOT, t + 10_000)
    )
    await h.advance(M - 10_000)
    assert h.transport.redacted_ids() == ["$a", "$c"]
    await h.advance(10_000)
    assert h.transport.redacted_ids() == ["$a", "$c", "$b"]


async def test_no_policy_tracks_nothing(h: Harness) -> None:
    result = await h.ingest(Message("$m1", ALICE, h.now()))
    assert result.tracked == 0
    assert result.policy_changes and result.policy_changes[0].initial
    assert result.policy_changes[0].policy == Policy.off()
    assert await h.event_ids() == set()


async def test_policy_off_tracks_nothing(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    await h.set_policy(Policy.off())
    result = await h.ingest(Message("$m1", ALICE, h.now()))
    assert result.tracked == 0
    assert await h.event_ids() == set()
    await h.advance(10 * M)
    assert h.transport.redact_calls == []


async def test_policy_event_applies_only_to_later_messages(h: Harness) -> None:
    t = h.now() - 2  # all sent by now
    result = await h.ingest(
        Message("$before", ALICE, t),
        PolicyEvent(POLICY_EVENT_TYPE, ADMIN, t + 1, Policy.after_send(M).to_state()),
        Message("$after", ALICE, t + 2),
    )
    assert result.tracked == 1
    assert await h.event_ids() == {"$after"}
    [change] = result.policy_changes
    assert (change.policy, change.sender, change.initial) == (Policy.after_send(M), ADMIN, True)

    # A later change does not reach back either: $after keeps its 1 minute.
    t2 = h.now()
    await h.ingest(
        PolicyEvent(POLICY_EVENT_TYPE, ADMIN, t2, Policy.after_send(60 * M).to_state()),
        Message("$later", ALICE, t2),
    )
    assert (await h.event("$after"))["due_at"] == t + 2 + M
    assert (await h.event("$later"))["due_at"] == t2 + 60 * M
    room = await h.engine.room(ROOM)
    assert room is not None and room.policy == Policy.after_send(60 * M)
    assert room.policy_sender == ADMIN
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$after"]


async def test_beeper_event_sets_policy(h: Harness) -> None:
    t = h.now()
    await h.ingest(
        PolicyEvent(BEEPER_EVENT_TYPE, BOB, t, {"type": "after_send", "timer": M}),
        Message("$m1", ALICE, t),
    )
    assert (await h.event("$m1"))["due_at"] == t + M


async def test_invalid_policy_event_is_reported_and_ignored(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    result = await h.ingest(
        PolicyEvent(POLICY_EVENT_TYPE, BOB, t, {"mode": "after_send", "timer_ms": "soon"}),
        Message("$m1", ALICE, t),
    )
    [bad] = result.invalid_policies
    assert (bad.room_id, bad.sender, bad.event_type) == (ROOM, BOB, POLICY_EVENT_TYPE)
    assert result.policy_changes == ()
    assert (await h.event("$m1"))["due_at"] == t + M


async def test_rooms_are_independent(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M), room="!a:x")
    t = h.now()
    await h.ingest(Message("$a1", ALICE, t), room="!a:x")
    await h.ingest(Message("$b1", ALICE, t), room="!b:x")
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$a1"]
    assert h.transport.redact_calls[0][0] == "!a:x"


async def test_sync_token_is_stored_with_the_batch(h: Harness) -> None:
    assert h.engine is not None
    assert await h.engine.sync_token() is None
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m1", ALICE, h.now()), meta={"sync_token": "s1"})
    assert await h.engine.sync_token() == "s1"
    with h.sync_db() as db:
        assert db.execute("SELECT value FROM meta WHERE key='sync_token'").fetchone() == ("s1",)


async def test_failed_batch_stores_neither_events_nor_token(h: Harness) -> None:
    assert h.engine is not None
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m1", ALICE, h.now()), meta={"sync_token": "s1"})
    broken = Message("$bad", ALICE, None)  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - whatever the failure, it must roll back
        await h.ingest(
            Marker("$x"), Message("$m2", ALICE, h.now()), broken, meta={"sync_token": "s2"}
        )
    assert await h.engine.sync_token() == "s1"
    assert await h.event_ids() == {"$m1"}
    # The engine still works afterwards.
    await h.ingest(Message("$m3", ALICE, h.now()), meta={"sync_token": "s3"})
    assert await h.engine.sync_token() == "s3"
    assert await h.event_ids() == {"$m1", "$m3"}
    await h.advance(M)
    assert sorted(h.transport.redacted_ids()) == ["$m1", "$m3"]


async def test_last_event_id_is_recorded(h: Harness) -> None:
    from bot.engine.model import RoomUpdate

    assert h.engine is not None
    await h.engine.ingest([RoomUpdate(ROOM, (Marker("$e1"),), (), last_event_id="$e1")])
    assert (await h.room_row())["last_event_id"] == "$e1"


async def test_beeper_mirror_keeps_lethe_cap_and_readers(h: Harness) -> None:
    lethe = Policy.after_read(M, 2 * 24 * 60 * M, Readers.ANY)
    t = h.now()
    first = await h.ingest(PolicyEvent(POLICY_EVENT_TYPE, ADMIN, t, lethe.to_state()))
    # Lethe writes the Beeper event right after its own; it comes back newer.
    second = await h.ingest(PolicyEvent(BEEPER_EVENT_TYPE, BOT, t + 1, lethe.to_beeper()))
    assert [c.policy for c in first.policy_changes] == [lethe]
    assert second.policy_changes == ()
    room = await h.engine.room(ROOM)
    assert room is not None and room.policy == lethe
    # A Beeper client changing the timer later does win.
    third = await h.ingest(
        PolicyEvent(BEEPER_EVENT_TYPE, BOB, t + 2, {"type": "after_send", "timer": 5 * M})
    )
    assert [(c.policy, c.sender) for c in third.policy_changes] == [(Policy.after_send(5 * M), BOB)]


async def test_status_and_forget_room(h: Harness) -> None:
    assert h.engine is not None
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", ALICE, t + 5))
    status = await h.engine.status(ROOM)
    assert status is not None
    assert (status.pending, status.next_due, status.redacted) == (2, t + M, 0)
    assert status.policy == Policy.after_send(M)
    await h.engine.forget_room(ROOM)
    assert await h.engine.status(ROOM) is None
    assert await h.event_ids() == set()
    await h.advance(2 * M)
    assert h.transport.redact_calls == []
