"""Edits, reactions and poll responses go with their target when Lethe expires it;
thread replies keep their own deadline; redactions by others cascade nothing."""

from __future__ import annotations

from typing import Any

import pytest

from bot.engine.engine import EngineConfig
from bot.engine.model import EventStatus, MemberChange, Message, Redaction
from bot.engine.policy import Policy
from bot.matrix.events import receipts_from_content, to_items

from .conftest import ALICE, BOB, BOT, CAROL, ROOM, Harness

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
    await h.advance(H)  # nothing stored meanwhile: $m1, sent then, arrives only now
    await h.ingest(Message("$m1", ALICE, t), Message("$edit", ALICE, t + H, parent_id="$m1"))
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


async def test_redaction_by_someone_else_forgets_without_cascading(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    t = h.now()
    await h.ingest(
        Message("$m1", ALICE, t),
        Message("$react", BOB, t, parent_id="$m1"),
        Message("$m2", ALICE, t),
    )
    await h.ingest(Redaction("$m1", event_id="$redaction"))
    assert h.transport.redact_calls == [], "already gone, and not Lethe's expiry: no cascade"
    assert await h.event_ids() == {"$react", "$m2"}
    # The redaction event itself is not ours to track; the reaction keeps its deadline.
    await h.advance(H - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert sorted(h.transport.redacted_ids()) == ["$m2", "$react"]


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


# --- raw events, parsed as the fronts parse them ---------------------------------------

ROOM2 = "!elsewhere:x"
MOD = "@mod:x"  # a moderator on the senders' server


def _raw(
    event_id: str, sender: str, ts: int, rel_type: str | None = None, target: str | None = None,
    event_type: str = "m.room.encrypted",
) -> dict[str, Any]:
    """A timeline event as the homeserver serves it: in an encrypted room the content is
    ciphertext, but ``m.relates_to`` stays in the clear."""
    content: dict[str, Any] = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "opaque"}
    if rel_type == "m.thread":
        content["m.relates_to"] = {"rel_type": rel_type, "event_id": target,
                                   "is_falling_back": True,
                                   "m.in_reply_to": {"event_id": target}}
    elif rel_type == "m.annotation":
        event_type, content = "m.reaction", {"m.relates_to": {
            "rel_type": rel_type, "event_id": target, "key": "+1"}}
    elif rel_type is not None:
        content["m.relates_to"] = {"rel_type": rel_type, "event_id": target}
    return {"event_id": event_id, "sender": sender, "origin_server_ts": ts,
            "type": event_type, "content": content}


async def _ingest_raw(h: Harness, *events: dict[str, Any], room: str = ROOM) -> None:
    await h.ingest(*to_items(events), room=room)


async def _read(h: Harness, user: str, event_id: str, thread_id: str | None) -> None:
    """A public m.read receipt as it comes in an m.receipt EDU."""
    info: dict[str, Any] = {"ts": h.now()}
    if thread_id is not None:
        info["thread_id"] = thread_id
    await h.receipts(*receipts_from_content({event_id: {"m.read": {user: info}}}))


async def test_thread_reply_keeps_its_own_deadline_when_the_root_expires(h: Harness) -> None:
    """The reported bug: in an after_read room the one required reader read the root in
    the main timeline; the unread thread reply went with the root, before its time."""
    timer = 3_000
    await h.ingest(MemberChange(ALICE, True, "$join-a"), MemberChange(BOB, True, "$join-b"),
                   h.policy_event(Policy.after_read(timer, H)))
    t = h.now() - 10  # both sent by now
    await _ingest_raw(
        h, _raw("$root", ALICE, t), _raw("$reply", ALICE, t + 10, "m.thread", "$root")
    )
    reply = await h.event("$reply")
    assert reply is not None
    assert (reply["thread_id"], reply["due_at"]) == ("$root", t + 10 + H)

    await h.advance(1_000)
    await _read(h, BOB, "$root", "main")  # Element's receipt on a root in the main timeline
    await h.advance(timer - 1)
    assert h.transport.redact_calls == []
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$root"]
    await h.advance(10 * 60_000)
    assert h.transport.redacted_ids() == ["$root"], "the unread thread reply went with its root"
    reply = await h.event("$reply")
    assert reply is not None
    assert (reply["parent_id"], reply["due_at"]) == (None, t + 10 + H)

    # Read in its thread, it goes at its own deadline: the timer after that receipt.
    await _read(h, BOB, "$reply", "$root")
    await h.advance(timer - 1)
    assert h.transport.redacted_ids() == ["$root"]
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$root", "$reply"]
    assert await h.event_ids() == set()


async def test_edits_reactions_and_poll_responses_go_with_their_target_on_expiry(
    h: Harness,
) -> None:
    """Sent under 'off' they have no deadline of their own, yet go when Lethe expires
    their target; a thread reply sent under 'off' is a message of its own and stays."""
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await _ingest_raw(h, _raw("$root", ALICE, t), _raw("$poll", ALICE, t + 1))
    await h.set_policy(Policy.off())
    await _ingest_raw(
        h,
        _raw("$edit", ALICE, t + 2, "m.replace", "$root"),
        _raw("$react", BOB, t + 3, "m.annotation", "$root"),
        _raw("$vote", BOB, t + 4, "m.reference", "$poll"),
        _raw("$end", ALICE, t + 5, "m.reference", "$poll"),
        _raw("$reply", BOB, t + 6, "m.thread", "$root"),
    )
    children = {"$edit", "$react", "$vote", "$end"}
    assert await h.event_ids() == {"$root", "$poll"} | children, "the thread reply is not tracked"
    await h.advance(M - 1)
    assert h.transport.redact_calls == []
    await h.advance(2)  # the poll was sent 1 ms after the root
    redacted = h.transport.redacted_ids()
    assert redacted[0] == "$root"
    assert set(redacted) == {"$root", "$poll"} | children and len(redacted) == 6
    assert await h.event_ids() == set()
    await h.advance(10 * M)
    assert "$reply" not in h.transport.redacted_ids()


@pytest.mark.parametrize("redactor", [ALICE, MOD], ids=["sender", "moderator"])
@pytest.mark.parametrize("target", ["$root", "$poll"])
async def test_foreign_redaction_of_a_root_or_poll_cascades_nothing(
    h: Harness, target: str, redactor: str
) -> None:
    """alice deletes her own thread root or poll (or a moderator does): everybody's
    replies, reactions and votes keep their own deadlines; what was tracked only to
    follow the deleted event (sent under 'off') is forgotten, never stranded."""
    await h.set_policy(Policy.after_send(H))
    t = h.now()
    await _ingest_raw(
        h,
        _raw("$root", ALICE, t),
        _raw("$poll", ALICE, t),
        _raw("$reply", BOB, t, "m.thread", "$root"),
        _raw("$react", BOB, t, "m.annotation", "$root"),
        _raw("$vote", BOB, t, "m.reference", "$poll"),
    )
    await h.set_policy(Policy.off())
    await _ingest_raw(
        h,
        _raw("$edit", ALICE, t + 1, "m.replace", "$root"),
        _raw("$react-edit", BOB, t + 2, "m.annotation", "$edit"),
        _raw("$late-vote", CAROL, t + 3, "m.reference", "$poll"),
    )
    followers = {"$root": {"$edit", "$react-edit"}, "$poll": {"$late-vote"}}[target]
    tracked = await h.event_ids()

    await h.ingest(Redaction(target, "$theirs", redactor))
    assert h.transport.redact_calls == []
    assert await h.event_ids() == tracked - {target} - followers
    for own in ("$reply", "$react", "$vote"):
        assert (await h.event(own))["due_at"] == t + H, own  # type: ignore[index]

    await h.advance(H - 1)
    assert h.transport.redact_calls == [], "a foreign redaction made other events due"
    await h.advance(1)
    assert set(h.transport.redacted_ids()) == tracked - {target} - followers
    assert await h.event_ids() == set()
    assert await h.store.pending_count() == 0


async def test_a_redaction_seen_while_lethe_expires_the_target_still_takes_its_children(
    make_harness,
) -> None:
    """Lethe had sent its own redaction when somebody else's came: the target was
    Lethe's to expire, so its children go with it once Lethe's is confirmed."""
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, echo_wait_ms=10_000))
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    # The first redaction in a room is fetched; the second waits for its echo.
    await h.ingest(Message("$m0", ALICE, t - 1_000), Message("$m1", ALICE, t))
    await h.set_policy(Policy.off())
    await h.ingest(Message("$react", BOB, t + 1, parent_id="$m1"))
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$m0", "$m1"]
    assert (await h.event("$m1"))["status"] == EventStatus.SENT  # type: ignore[index]
    await h.ingest(Redaction("$m1", "$theirs", ALICE))
    assert h.transport.redacted_ids() == ["$m0", "$m1"]
    assert await h.event_ids() == {"$m1", "$react"}
    await h.ingest(h.transport.echo("$m1"))
    assert h.transport.redacted_ids() == ["$m0", "$m1", "$react"]
    assert await h.event_ids() == {"$react"}  # sent, its own echo still to come
    await h.ingest(h.transport.echo("$react"))
    assert await h.event_ids() == set()


@pytest.mark.parametrize("policy", [Policy.off(), Policy.after_send(H)], ids=["off", "active"])
async def test_cross_room_relation_creates_no_child(h: Harness, policy: Policy) -> None:
    await h.set_policy(Policy.after_send(M))
    await h.set_policy(policy, room=ROOM2)
    t = h.now()
    await _ingest_raw(h, _raw("$m1", ALICE, t))
    # A relation in another room naming a tracked event id (the target is not there).
    await _ingest_raw(
        h, _raw("$react", BOB, t, "m.annotation", "$m1"), _raw("$edit", BOB, t, "m.replace", "$m1"),
        room=ROOM2,
    )
    if policy.active:
        for event_id in ("$react", "$edit"):
            row = await h.event(event_id)
            assert row is not None and row["parent_id"] is None, event_id
            assert row["due_at"] == t + H
    else:
        assert await h.event_ids() == {"$m1"}
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$m1"], "the other room's events followed $m1"
    if policy.active:
        await h.advance(H)
        assert sorted(h.transport.redacted_ids()[1:]) == ["$edit", "$react"]
    assert await h.store.pending_count() == 0


async def test_relation_after_its_target_was_redacted_in_the_same_batch(h: Harness) -> None:
    """A reaction that comes after its target's (foreign) redaction has nothing to
    follow: it is not left waiting for a parent that is gone."""
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t))
    await h.set_policy(Policy.off())
    await h.ingest(
        Redaction("$m1", "$theirs", ALICE), Message("$react", BOB, t + 1, parent_id="$m1")
    )
    assert await h.event_ids() == set()
    assert await h.store.pending_count() == 0


async def test_thread_replies_stored_as_children_before_keep_their_own_deadline(
    h: Harness,
) -> None:
    """Rows stored by earlier versions name a thread reply's root as its parent
    (thread_id = parent_id): the root's expiry takes none of them along; one tracked
    only to follow the root (sent under 'off') is forgotten."""
    await h.set_policy(Policy.after_send(M))
    t = h.now() - 3  # all sent by now
    await h.ingest(
        Message("$root", ALICE, t),
        Message("$reply", BOB, t + 1, thread_id="$root", parent_id="$root"),
        Message("$react", BOB, t + 2, parent_id="$root"),
    )
    await h.set_policy(Policy.off())
    await h.ingest(Message("$late", CAROL, t + 3, thread_id="$root", parent_id="$root"))
    await h.advance(M - 3)
    assert h.transport.redacted_ids() == ["$root", "$react"]
    assert await h.event_ids() == {"$reply"}
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$root", "$react", "$reply"]
    assert await h.store.pending_count() == 0
