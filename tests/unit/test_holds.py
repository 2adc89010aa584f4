"""Holds (bot/engine/holds.py): the bot's pinned policy notice is exempt from expiry
whether the hold comes before or after the sync that brings the notice; released,
it expires by the rule it was sent under (at once if that time has passed)."""

from __future__ import annotations

from bot.engine.model import Message
from bot.engine.policy import Policy

from .conftest import ALICE, BOT, ROOM, Harness

M = 60_000


async def test_hold_after_the_echo_takes_it_off_the_schedule(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    sent = h.now()
    await h.ingest(Message("$pin", BOT, sent), Message("$other", BOT, sent))
    assert h.engine is not None
    assert await h.engine.hold(ROOM, "$pin")
    assert await h.event("$pin") is None, "off the schedule while held"
    await h.advance(2 * M)
    assert h.transport.redacted_ids() == ["$other"]
    assert [held.event_id for held in await h.engine.held(ROOM)] == ["$pin"]

    found = await h.engine.release(ROOM, "$pin")
    assert found is not None and found.rule == Policy.after_send(M)
    row = await h.event("$pin")
    assert row is not None and row["due_at"] == h.now(), "its time passed: due at once"
    await h.advance(0)
    assert h.transport.redacted_ids() == ["$other", "$pin"]
    assert await h.engine.held(ROOM) == []


async def test_hold_before_the_echo_is_not_lost(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    assert h.engine is not None
    assert await h.engine.hold(ROOM, "$pin")
    sent = h.now()
    # A member's message with the same id cannot be: only the bot's own echo is held.
    await h.ingest(Message("$pin", BOT, sent), Message("$m", ALICE, sent))
    assert await h.event("$pin") is None
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$m"]

    await h.close()
    await h.start()  # the hold is durable, its rule with it
    assert h.engine is not None
    found = await h.engine.release(ROOM, "$pin")
    assert found is not None and found.rule == Policy.after_send(M) and found.sent_at == sent
    await h.advance(0)
    assert h.transport.redacted_ids() == ["$m", "$pin"]


async def test_released_before_its_deadline_keeps_its_deadline(h: Harness) -> None:
    await h.set_policy(Policy.after_send(10 * M))
    assert h.engine is not None
    sent = h.now()
    await h.ingest(Message("$pin", BOT, sent))
    assert await h.engine.hold(ROOM, "$pin")
    await h.advance(M)
    await h.engine.release(ROOM, "$pin")
    row = await h.event("$pin")
    assert row is not None and row["due_at"] == sent + 10 * M


async def test_a_release_before_the_echo_lets_it_be_tracked(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    assert h.engine is not None
    assert await h.engine.hold(ROOM, "$pin")
    found = await h.engine.release(ROOM, "$pin")
    assert found is not None and found.rule is None
    await h.ingest(Message("$pin", BOT, h.now()))
    assert await h.event("$pin") is not None


async def test_held_under_an_off_policy_is_not_tracked_when_released(h: Harness) -> None:
    assert h.engine is not None
    assert await h.engine.hold(ROOM, "$pin")
    await h.ingest(Message("$pin", BOT, h.now()))
    found = await h.engine.release(ROOM, "$pin")
    assert found is not None and found.rule == Policy.off()
    assert await h.event("$pin") is None


async def test_an_after_read_notice_released_counts_as_read_when_sent(h: Harness) -> None:
    policy = Policy.after_read(M, 10 * M)
    await h.set_policy(policy)
    assert h.engine is not None
    sent = h.now()
    await h.ingest(Message("$pin", BOT, sent))
    assert await h.engine.hold(ROOM, "$pin")
    await h.advance(M // 2)
    found = await h.engine.release(ROOM, "$pin")
    assert found is not None and found.rule == policy
    row = await h.event("$pin")
    assert row is not None and row["due_at"] == sent + M and row["read_at"] == sent
