"""What fronts (the nio bot, the appservice bridge) hand to the engine.

Fronts translate Matrix events into these values, in timeline order. None of
them carries message content: only ids, senders, times and relations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.engine.policy import Policy
from bot.engine.store import DueEvent


@dataclass(frozen=True)
class Message:
    """A non-state timeline event Lethe may redact (messages, encrypted events,
    stickers, reactions, edits, polls, thread replies, notices)."""

    event_id: str
    sender: str
    origin_ts: int
    thread_id: str | None = None  # thread root, for events in a thread
    parent_id: str | None = None  # the event an edit, reaction or poll response belongs to


@dataclass(frozen=True)
class Marker:
    """Any other timeline event (state changes): only a position receipts may point at."""

    event_id: str


@dataclass(frozen=True)
class MemberChange:
    user_id: str
    joined: bool
    event_id: str | None = None  # None in the state block before a timeline


@dataclass(frozen=True)
class PolicyEvent:
    """A ``chat.lethe.policy`` or ``com.beeper.disappearing_timer`` state event."""

    event_type: str
    sender: str
    origin_ts: int
    content: object
    in_timeline: bool = True  # False for the state block before a (limited) timeline
    event_id: str | None = None
    # Who redacted it ("" if unknown), when it arrives redacted: its content is gone, which
    # is not an "off", so it changes nothing.
    redacted_by: str | None = None
    # Why its sender may not change the policy (set by the front, which knows the power
    # levels at this point of the timeline); None = allowed or unchecked.
    refused: str | None = None


@dataclass(frozen=True)
class Redaction:
    """Somebody (maybe Lethe itself, seen coming back) redacted ``target``."""

    target: str
    event_id: str | None = None
    sender: str | None = None


@dataclass(frozen=True)
class Receipt:
    """A public ``m.read`` receipt. ``thread_id`` None = unthreaded."""

    user_id: str
    event_id: str
    thread_id: str | None = None
    ts: int | None = None


TimelineItem = Message | Marker | MemberChange | PolicyEvent | Redaction


@dataclass(frozen=True)
class RoomUpdate:
    room_id: str
    timeline: tuple[TimelineItem, ...] = ()
    receipts: tuple[Receipt, ...] = ()
    last_event_id: str | None = None


@dataclass(frozen=True)
class PolicyChange:
    room_id: str
    policy: Policy
    sender: str
    initial: bool  # first policy seen for a room Lethe just started watching


@dataclass(frozen=True)
class InvalidPolicy:
    room_id: str
    sender: str
    event_type: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    policy_changes: tuple[PolicyChange, ...] = ()
    invalid_policies: tuple[InvalidPolicy, ...] = ()
    tracked: int = 0
    emptied_rooms: tuple[str, ...] = field(default=())
    # Lethe's own redactions the event stream brought back: confirmed, now counted.
    redacted: tuple[DueEvent, ...] = ()
