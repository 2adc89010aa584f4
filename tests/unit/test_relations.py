"""Edits, reactions and thread replies go with their parent; redactions by others."""

from __future__ import annotations

from bot.engine.model import Message, Redaction
from bot.engine.policy import Policy

from .conftest import ALICE, BOB, Harness

M = 60_000
H = 60 * M


async def test_children_follow_their_parent_even_when_sent_under_off(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t))
    await h.set_policy(Policy.off())
    await h.ingest(
        Message("$react", BOB, t + 1, parent_id="$m1"),
        Message("$edit", ALICE, t + 2, parent_id="$m1"),
        Message("$unrelated", BOB, t + 3),
        Message("$react-unknown", BOB, t + 4, parent_id="$never-seen"),
    )
    # Children are tracked without a deadline of their own; the rest is not tracked.
    assert await h.event_ids() == {"$m1", "$react", "$edit"}
    assert (await h.event("$react"))["due_at"] is None

    await h.advance(M - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    redacted = h.transport.redacted_ids()
    assert redacted[0] == "$m1"
    assert sorted(redacted[1:]) == ["$edit", "$react"]
    assert await h.event_ids() == set()
    assert (await h.room_row())["redacted_count"] == 3


async def test_child_due_later_goes_with_parent(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t))
    await h.advance(M - 10_000)
    # Reacted just before the parent expires: its own due time is a minute away.
    await h.ingest(Message("$react", BOB, h.now(), parent_id="$m1"))
    assert (await h.event("$react"))["due_at"] == h.now() + M
    assert (await h.event("$react"))["parent_id"] == "$m1"
    await h.advance(10_000)
    assert h.transport.redacted_ids() == ["$m1", "$react"]


async def test_child_in_same_batch_as_parent(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t - H), Message("$edit", ALICE, t, parent_id="$m1"))
    assert h.transport.redacted_ids() == ["$m1", "$edit"]


async def test_grandchildren_follow_too(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t))
    await h.set_policy(Policy.off())
    await h.ingest(
        Message("$edit", ALICE, t, parent_id="$m1"),
        Message("$react-to-edit", BOB, t, parent_id="$edit"),
    )
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$m1", "$edit", "$react-to-edit"]


async def test_redaction_by_someone_else_forgets_and_cascades(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    t = h.now()
    await h.ingest(
        Message("$m1", ALICE, t),
        Message("$react", BOB, t, parent_id="$m1"),
        Message("$m2", ALICE, t),
    )
    await h.ingest(Redaction("$m1", event_id="$redaction"))
    assert "$m1" not in h.transport.redacted_ids(), "already gone: no redact call"
    assert h.transport.redacted_ids() == ["$react"]
    assert await h.event_ids() == {"$m2"}
    # The redaction event itself is not ours to track.
    await h.advance(2 * H)
    assert h.transport.redacted_ids() == ["$react", "$m2"]


async def test_redaction_in_the_same_batch_as_its_target(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Redaction("$m1", event_id="$r"))
    assert await h.event_ids() == set()
    await h.advance(2 * H)
    assert h.transport.redact_calls == []


async def test_redaction_of_unknown_event_is_harmless(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    await h.ingest(Message("$m1", ALICE, h.now()), Redaction("$unknown", event_id="$r"))
    assert await h.event_ids() == {"$m1"}
    assert h.transport.redact_calls == []


async def test_seeing_our_own_redaction_come_back_changes_nothing(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.advance(M)
    assert (await h.room_row())["redacted_count"] == 1
    await h.ingest(Redaction("$m1", event_id="$ours"))
    assert (await h.room_row())["redacted_count"] == 1
    assert h.transport.redacted_ids() == ["$m1"]
