"""A message's own timer: ``com.beeper.disappearing_timer`` in its content, as mautrix
bridges and Beeper clients stamp each message (mautrix-go's ``event.DisappearingTimer``:
``{"type": "after_send"|"after_read"|"after_read_by_recipient", "timer": ms}``; an
empty object or a zero timer is none).

In encrypted rooms the key is inside the encrypted payload: the fronts read it from
the decrypted content. A message's timer may only shorten the room's rule, never
lengthen it: ``effective_policy`` gives the rule whose deadline is the earlier of the
two, whatever happens (reads, the cap). Pure: no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    MAX_DURATION_MS,
    MIN_DURATION_MS,
    Mode,
    Policy,
    Readers,
    default_cap,
)

log = logging.getLogger(__name__)

TIMER_KEY = BEEPER_EVENT_TYPE  # the same name as the state event, in a message's content
# mautrix's mode for direct chats: after the recipient read it. Lethe's after_read with
# readers all says the same in a two-person room (and the stricter thing in a group).
AFTER_READ_BY_RECIPIENT = "after_read_by_recipient"
_KINDS = {
    Mode.AFTER_SEND.value: Mode.AFTER_SEND,
    Mode.AFTER_READ.value: Mode.AFTER_READ,
    AFTER_READ_BY_RECIPIENT: Mode.AFTER_READ,
}


@dataclass(frozen=True)
class MessageTimer:
    """One message's own rule: ``mode`` after_send or after_read (readers all), after
    ``timer_ms``. It has no cap of its own: the room's rule (or the configured default
    cap, where the room's policy is off) bounds an after_read."""

    mode: Mode
    timer_ms: int


def parse_timer(content: Mapping[str, object]) -> MessageTimer | None:
    """The timer a message's content carries, or None: absent, empty, zero, or
    malformed (logged at debug, by shape only; never an exception)."""
    raw = content.get(TIMER_KEY)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        log.debug("ignoring a message timer that is not an object (%s)", type(raw).__name__)
        return None
    kind, timer = raw.get("type"), raw.get("timer")
    zero = isinstance(timer, int) and not isinstance(timer, bool) and timer == 0
    if not raw or zero or (timer is None and kind in (None, "")):
        return None  # mautrix's "no timer"
    mode = _KINDS.get(kind) if isinstance(kind, str) else None
    if mode is None:
        log.debug("ignoring a message timer of unknown type (%s)", type(kind).__name__)
        return None
    if not isinstance(timer, int) or isinstance(timer, bool) or not 0 < timer <= MAX_DURATION_MS:
        log.debug("ignoring a message timer whose timer is not a duration in ms")
        return None
    # Under a second counts as one: Lethe's shortest timer.
    return MessageTimer(mode, max(timer, MIN_DURATION_MS))


def effective_policy(room: Policy, own: MessageTimer | None, default_cap_ms: int) -> Policy:
    """The rule one message is tracked under: the room's, shortened by its own timer
    (deadline = the earlier of the two, never later than the room's). In a room whose
    policy is off the message's own rule applies alone; its after_read is capped by the
    configured default cap there."""
    if own is None:
        return room
    t = own.timer_ms
    if room.mode is Mode.OFF:
        if own.mode is Mode.AFTER_SEND:
            return Policy.after_send(t)
        return Policy.after_read(t, default_cap(default_cap_ms, t), Readers.ALL)
    room_timer = room.timer_ms
    assert room_timer is not None
    if room.mode is Mode.AFTER_SEND:
        if own.mode is Mode.AFTER_SEND or t >= room_timer:
            # after_read(t) with t >= T can never come before sent + T.
            return Policy.after_send(min(t, room_timer))
        # Read + t, but never after the room's sent + T: that is after_read's cap.
        return Policy.after_read(t, room_timer, Readers.ALL)
    cap = room.cap_ms
    assert cap is not None
    if own.mode is Mode.AFTER_SEND:
        if t <= room_timer:
            # sent + t comes before read + T (and before the cap, which is >= T).
            return Policy.after_send(t)
        return Policy.after_read(room_timer, min(cap, t), room.readers)
    return Policy.after_read(min(t, room_timer), cap, room.readers)


class Own(IntEnum):
    """Whether a tracked event's deadline is its own (stored as this integer; shown by
    `lethe pending`)."""

    NONE = 0  # the room's rule
    TIMER = 1  # its content's timer shortened the room's rule
    EXPIRE = 2  # `!lethe expire` gave it one


class Expiry(StrEnum):
    """What giving a tracked event a deadline of its own did."""

    SHORTENED = "shortened"  # due at the new time now
    EARLIER = "earlier"  # already due at that time or earlier: unchanged
    GOING = "going"  # already being redacted (or given up on): unchanged
    UNTRACKED = "untracked"  # not on a schedule in that room
    TRACKED = "tracked"  # was not on one; tracked now, with only that deadline
