"""A message's own timer (bot/engine/msgtimer.py): parsing it from content, combining
it with the room's rule (only ever shorter), through ingest; and `!lethe expire`: its
grammar, the reply it must be, and its engine part (Engine.expire_event)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bot.engine.model import EventStatus, MemberChange, Message, Receipt
from bot.engine.msgtimer import (
    TIMER_KEY,
    Expiry,
    MessageTimer,
    Own,
    effective_policy,
    parse_timer,
)
from bot.engine.policy import MAX_DURATION_MS, Mode, Policy, Readers
from bot.front.commands import CommandError, Expire, is_command, parse_command
from bot.matrix.events import to_item
from bot.matrix.expiry import reply_target

from .conftest import ALICE, BOB, ROOM, Harness

S = 1000
M = 60 * S
H = 60 * M
D = 24 * H
DEFAULT_CAP = 7 * D

SEND = Mode.AFTER_SEND
READ = Mode.AFTER_READ


def own(mode: Mode, ms: int) -> MessageTimer:
    return MessageTimer(mode, ms)


# --- parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ({"type": "after_send", "timer": 5000}, own(SEND, 5000)),
    ({"type": "after_read", "timer": 60000}, own(READ, 60000)),
    ({"type": "after_read_by_recipient", "timer": 60000}, own(READ, 60000)),
    ({"type": "after_send", "timer": 1}, own(SEND, S)),  # under a second counts as one
    ({}, None),
    ({"type": "after_send", "timer": 0}, None),
    ({"type": "", "timer": None}, None),
])
def test_parse_timer(value: object, expected: MessageTimer | None) -> None:
    assert parse_timer({TIMER_KEY: value}) == expected


@pytest.mark.parametrize("value", [
    "after_send", 5000, True, [], ["after_send", 5000], None,
    {"type": "after_send", "timer": "5000"},
    {"type": "after_send", "timer": -5},
    {"type": "after_send", "timer": MAX_DURATION_MS + 1},
    {"type": "after_send", "timer": 10**40},
    {"type": "after_send", "timer": True},
    {"type": "after_send", "timer": 5.5},
    {"type": "after_send", "timer": {"nested": [1, 2]}},
    {"type": "sometimes", "timer": 5000},
    {"type": ["after_send"], "timer": 5000},
    {"type": None, "timer": 5000},
    {"timer": 5000},
])
def test_malformed_timers_are_ignored(value: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bot.engine.msgtimer"):
        assert parse_timer({TIMER_KEY: value}) is None


def _event(content: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": "$e", "sender": ALICE, "type": "m.room.message",
            "origin_server_ts": 1, "content": content}


def test_message_carries_its_timer_but_an_edit_does_not() -> None:
    timer = {"type": "after_send", "timer": 5000}
    item = to_item(_event({"body": "x", TIMER_KEY: timer}))
    assert isinstance(item, Message) and item.timer == own(SEND, 5000)
    edit = to_item(_event({"body": "* y", TIMER_KEY: timer, "m.new_content": {"body": "y"},
                           "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}}))
    assert isinstance(edit, Message) and edit.parent_id == "$orig" and edit.timer is None


# --- combining: never later than the room's rule -----------------------------------


@pytest.mark.parametrize(("room", "timer", "expected"), [
    # after_send + after_send: the shorter.
    (Policy.after_send(H), own(SEND, M), Policy.after_send(M)),
    (Policy.after_send(M), own(SEND, H), Policy.after_send(M)),
    # room after_read(T, cap C) + message after_send(t)
    (Policy.after_read(H, D), own(SEND, M), Policy.after_send(M)),
    (Policy.after_read(H, D), own(SEND, H), Policy.after_send(H)),
    (Policy.after_read(H, D), own(SEND, 2 * H), Policy.after_read(H, 2 * H)),
    (Policy.after_read(H, D), own(SEND, 2 * D), Policy.after_read(H, D)),
    (Policy.after_read(H, D, Readers.ANY), own(SEND, 2 * H),
     Policy.after_read(H, 2 * H, Readers.ANY)),
    # message after_read(t) + room after_send(T)
    (Policy.after_send(H), own(READ, M), Policy.after_read(M, H)),
    (Policy.after_send(H), own(READ, H), Policy.after_send(H)),
    (Policy.after_send(H), own(READ, D), Policy.after_send(H)),
    # both after_read: the shorter timer, the room's cap and readers
    (Policy.after_read(H, D), own(READ, M), Policy.after_read(M, D)),
    (Policy.after_read(M, D, Readers.ANY), own(READ, H), Policy.after_read(M, D, Readers.ANY)),
    # a room whose policy is off: the message's own rule, after_read with the default cap
    (Policy.off(), own(SEND, M), Policy.after_send(M)),
    (Policy.off(), own(READ, M), Policy.after_read(M, DEFAULT_CAP)),
    (Policy.off(), own(READ, 8 * D), Policy.after_read(8 * D, 8 * D)),
    # none of its own
    (Policy.after_send(H), None, Policy.after_send(H)),
])
def test_effective_policy(room: Policy, timer: MessageTimer | None, expected: Policy) -> None:
    assert effective_policy(room, timer, DEFAULT_CAP) == expected


@pytest.mark.parametrize("room", [
    Policy.after_send(M), Policy.after_send(D), Policy.after_read(M, H),
    Policy.after_read(H, D, Readers.ANY), Policy.after_read(D, 3 * D),
])
@pytest.mark.parametrize("timer", [own(m, t) for m in (SEND, READ) for t in (S, M, H, D, 9 * D)])
@pytest.mark.parametrize("read_after", [None, 0, M, H, 2 * D])
def test_never_later_than_the_room(room: Policy, timer: MessageTimer,
                                   read_after: int | None) -> None:
    """Whenever it is read (or never), the combined deadline is no later than the room's
    and no later than the message's own (after_read readers aside: the room's apply)."""
    sent = 10**12
    read = None if read_after is None else sent + read_after
    combined = effective_policy(room, timer, DEFAULT_CAP).deadline(sent, read)
    assert combined <= room.deadline(sent, read)
    own_deadline = sent + timer.timer_ms if timer.mode is SEND else (
        None if read is None else read + timer.timer_ms)
    if own_deadline is not None:
        assert combined <= own_deadline


# --- through ingest --------------------------------------------------------------


async def test_ingest_tracks_under_the_shorter_rule(h: Harness) -> None:
    await h.set_policy(Policy.after_send(H))
    sent = h.now()
    await h.ingest(Message("$short", ALICE, sent, timer=own(SEND, M)),
                   Message("$long", ALICE, sent, timer=own(SEND, D)),
                   Message("$plain", ALICE, sent))
    short, long, plain = [await h.event(e) for e in ("$short", "$long", "$plain")]
    assert short and long and plain
    assert (short["due_at"], short["own"]) == (sent + M, Own.TIMER)
    assert (long["due_at"], long["own"]) == (sent + H, Own.NONE)
    assert (plain["due_at"], plain["own"]) == (sent + H, Own.NONE)
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$short"]
    pending = await h.store.pending(ROOM)
    assert {p.event_id: p.own for p in pending} == {"$long": Own.NONE, "$plain": Own.NONE}


async def test_off_room_tracks_only_messages_with_a_timer(h: Harness) -> None:
    sent = h.now()
    result = await h.ingest(Message("$timed", ALICE, sent, timer=own(SEND, M)),
                            Message("$kept", ALICE, sent))
    assert result.tracked == 1
    assert await h.event_ids() == {"$timed"}
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$timed"]


async def test_after_read_by_recipient_in_a_direct_chat(h: Harness) -> None:
    await h.ingest(MemberChange(ALICE, True, "$ja"), MemberChange(BOB, True, "$jb"))
    sent = h.now()
    await h.ingest(Message("$dm", ALICE, sent, timer=own(READ, M)))
    assert (await h.event("$dm") or {})["due_at"] == sent + DEFAULT_CAP
    await h.advance(5 * M)
    assert h.transport.redacted_ids() == []
    await h.receipts(Receipt(BOB, "$dm"))
    assert (await h.event("$dm") or {})["due_at"] == sent + 6 * M
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$dm"]


# --- Engine.expire_event -------------------------------------------------------------


async def test_expire_shortens_never_lengthens(h: Harness) -> None:
    assert h.engine is not None
    await h.set_policy(Policy.after_send(H))
    sent = h.now()
    await h.ingest(Message("$a", ALICE, sent), Message("$edit", ALICE, sent, parent_id="$a"))
    assert await h.engine.expire_event(ROOM, "$a", sent + 2 * H) is Expiry.EARLIER
    assert (await h.event("$a") or {})["due_at"] == sent + H
    assert await h.engine.expire_event(ROOM, "$a", sent + M) is Expiry.SHORTENED
    row = await h.event("$a")
    assert row and (row["due_at"], row["own"]) == (sent + M, Own.EXPIRE)
    assert await h.engine.expire_event(ROOM, "$a", sent + 30 * M) is Expiry.EARLIER
    assert await h.engine.expire_event("!other:x", "$a", sent) is Expiry.UNTRACKED
    await h.advance(M)
    # Its edit follows it.
    assert sorted(h.transport.redacted_ids()) == ["$a", "$edit"]


async def test_expire_tracks_an_untracked_event_when_vouched_for(h: Harness) -> None:
    assert h.engine is not None
    sent = h.now()
    await h.ingest(Message("$old", ALICE, sent))  # off: not tracked
    assert await h.engine.expire_event(ROOM, "$old", sent + M) is Expiry.UNTRACKED
    assert await h.event_ids() == set()
    assert await h.engine.expire_event(ROOM, "$old", sent + M,
                                       untracked=(ALICE, sent)) is Expiry.TRACKED
    row = await h.event("$old")
    assert row and (row["due_at"], row["status"], row["own"]) == (
        sent + M, EventStatus.WAITING, Own.EXPIRE)
    # A reaction sent afterwards follows it.
    await h.ingest(Message("$react", BOB, sent + 1, parent_id="$old"))
    await h.advance(M)
    assert sorted(h.transport.redacted_ids()) == ["$old", "$react"]




# --- the command's grammar and the reply it must be ------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("!lethe expire 5s", Expire(5 * S)),
    ("!LETHE Expire 1h30m", Expire(90 * M)),
    # A reply from a client that still quotes the message it answers.
    ("> <@alice:x> the secret\n> second line\n\n!lethe expire 5m", Expire(5 * M)),
])
def test_expire_command_parses(body: str, expected: Expire) -> None:
    assert is_command(body, "!lethe")
    assert parse_command(body, "!lethe", DEFAULT_CAP) == expected


@pytest.mark.parametrize(("body", "error"), [
    ("!lethe expire", "usage: !lethe expire DUR, sent as a reply"),
    ("!lethe expire 5s 10s", "usage: !lethe expire DUR"),
    ("!lethe expire soon", "unknown duration"),
    ("!lethe expire 0s", "too short"),
    ("!lethe expire 200000w", "too long"),
])
def test_bad_expire_commands_say_why(body: str, error: str) -> None:
    with pytest.raises(CommandError, match=error):
        parse_command(body, "!lethe", DEFAULT_CAP)


def test_a_quote_alone_is_no_command() -> None:
    assert not is_command("> !lethe expire 5s", "!lethe")
    assert not is_command("> <@a:x> hi\n\nthanks", "!lethe")


@pytest.mark.parametrize(("content", "expected"), [
    ({"m.relates_to": {"m.in_reply_to": {"event_id": "$t"}}}, "$t"),
    ({"m.relates_to": {"m.in_reply_to": {"event_id": "t"}}}, None),
    ({"m.relates_to": {"m.in_reply_to": {"event_id": 5}}}, None),
    ({"m.relates_to": {"m.in_reply_to": "$t"}}, None),
    ({"m.relates_to": "$t"}, None),
    ({}, None),
])
def test_reply_target(content: dict[str, Any], expected: str | None) -> None:
    assert reply_target(content) == expected
