"""The engine's values: what fronts (the nio bot, the appservice bridge) hand to
the engine, what it hands back, and the rows the store reads and writes.

Fronts translate Matrix events into these values, in timeline order. None of
them carries message content: only ids (of events, people and files), senders,
times and relations.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from bot.engine.msgtimer import MessageTimer, Own
from bot.engine.policy import Policy, StatePolicy


class EventStatus(IntEnum):
    """Where a tracked event is on its way out (stored as this integer)."""

    WAITING = 0  # tracked; due_at set when its deadline is known
    IN_FLIGHT = 1  # handed to a redaction worker of this process (reset on start)
    PARKED = 2  # due, but the bot may not redact others' events here; resumes with power
    FAILED = 3  # gave up (the homeserver does not confirm the redaction)
    # The homeserver accepted our redaction; waiting for it to come back through the event
    # stream (sync or appservice push) until check_at, when the event is fetched instead.
    SENT = 4


class DelayState(IntEnum):
    """Whether the homeserver holds a delayed redaction of a tracked event (MSC4140
    delayed events, redactions through /send by MSC4169; see bot/engine/delayed.py)."""

    NONE = 0  # none: Lethe may schedule one once its deadline is known and within reach
    ARMING = 1  # the request's transaction id is stored; its delay id is not (yet)
    ARMED = 2  # the homeserver holds one (delay_id), firing at delay_at
    NEVER = 3  # Lethe redacts this event itself (took it over, or the server refused)


# Each status's name in listings and metrics, in the order they show them.
STATUS_NAMES: dict[EventStatus | int, str] = {
    status: status.name.lower()
    for status in (EventStatus.WAITING, EventStatus.IN_FLIGHT, EventStatus.SENT,
                   EventStatus.PARKED, EventStatus.FAILED)
}


class MediaState(IntEnum):
    """Where a file a tracked message points at is on its way out (stored as this integer)."""

    HELD = 0  # its message is still there: never deleted before its deadline
    DUE = 1  # its message is gone (expired by Lethe, or redacted by somebody else)
    DELETED = 2  # deleted (or already gone); the id is kept for audits until the ledger ends
    REMOTE = 3  # on another server: cannot be deleted from here (counted, kept as DELETED is)


@dataclass(frozen=True)
class MediaRef:
    """An ``mxc://server/media_id`` a message points at (a file or a thumbnail)."""

    server: str
    media_id: str


@dataclass(frozen=True)
class DueMedia:
    """A file whose every tracked message is gone: to delete."""

    server: str
    media_id: str
    attempts: int


@dataclass(frozen=True)
class MediaCounts:
    """Files of tracked messages, by state (see MediaState)."""

    held: int = 0
    due: int = 0
    deleted: int = 0
    remote: int = 0


def counts_by_name(counts: dict[EventStatus | int, int]) -> dict[str, int]:
    """Every status name, with a count (0 where none)."""
    named = dict.fromkeys(STATUS_NAMES.values(), 0)
    for status, count in counts.items():
        named[STATUS_NAMES.get(status, f"status_{status}")] = count
    return named


@dataclass(frozen=True)
class RoomRow:
    room_id: str
    policy: Policy
    policy_sender: str | None
    lethe_state: StatePolicy | None
    beeper_state: StatePolicy | None
    can_redact_others: bool
    bot_level: int | None
    redact_level: int | None
    last_event_id: str | None
    redacted_count: int
    failed_count: int


@dataclass(frozen=True)
class TrackedEvent:
    """A row to insert: one timeline event under the policy in force when it was sent."""

    event_id: str
    room_id: str
    sender: str
    seq: int
    origin_ts: int
    thread_id: str | None
    parent_id: str | None
    policy: Policy
    read_at: int | None
    due_at: int | None
    sent_at: int | None = None  # origin_ts as Lethe bounds it; None: origin_ts
    readers_left: int | None = None  # unread after_read: required readers yet to read
    media: tuple[MediaRef, ...] = ()  # its files, kept only while media deletion is on
    own: Own = Own.NONE  # whether its deadline is its own (msgtimer.py)


@dataclass(frozen=True)
class Delay:
    """A delayed redaction of a tracked event: scheduled (ARMING, ARMED) with the
    homeserver as ``by``, to fire at ``at`` (Lethe's clock)."""

    state: DelayState
    delay_id: str | None
    by: str | None
    at: int | None


@dataclass(frozen=True)
class DueEvent:
    event_id: str
    room_id: str
    sender: str
    # When the policy made it due (not a later retry time, which is the due_at column):
    # lag counts from here.
    deadline: int
    txn_id: str | None
    attempts: int
    delay: Delay | None = None  # a delayed redaction the homeserver holds (or may hold)


@dataclass(frozen=True)
class ArmCandidate:
    """A waiting event, for scheduling (or replacing) its delayed redaction."""

    event_id: str
    room_id: str
    sender: str
    due_at: int
    delay: Delay | None  # the one scheduled already, if any


@dataclass(frozen=True)
class DelayRef:
    """A delayed redaction of ``target`` that ``user_id`` scheduled, to cancel
    (``delay_id`` None: its id never came back; found by its target)."""

    delay_id: str | None
    user_id: str
    room_id: str
    target: str


@dataclass(frozen=True)
class CancelJob:
    job_id: int
    ref: DelayRef
    tries: int


@dataclass(frozen=True)
class PendingEvent:
    """Ids and times only: what `pending` listings show."""

    event_id: str
    room_id: str
    sender: str
    origin_ts: int
    due_at: int | None
    status: EventStatus | int  # an int only for a status this version does not know
    own: Own | int = Own.NONE  # whether its deadline is its own (msgtimer.py)


@dataclass(frozen=True)
class Erasure:
    """A redaction of Lethe's own, confirmed: the ledger an erasure audit asks the
    homeserver about (ids and a time only)."""

    room_id: str
    event_id: str
    redacted_at: int  # when Lethe confirmed it (ms)


@dataclass(frozen=True)
class RoomSchedule:
    pending: int  # not yet redacted and not given up on
    next_due: int | None  # the earliest due time: overdue (parked) events count too


@dataclass(frozen=True)
class ReceiptMove:
    """A member's receipt on ``thread`` that moved from ``old`` (0: none) to ``new``."""

    user_id: str
    thread: str
    old: int
    new: int
    read_at: int


@dataclass(frozen=True)
class Message:
    """A non-state timeline event Lethe may redact (messages, encrypted events,
    stickers, reactions, edits, polls, thread replies, notices)."""

    event_id: str
    sender: str
    origin_ts: int
    thread_id: str | None = None  # thread root, for events in a thread
    parent_id: str | None = None  # the event an edit, reaction or poll response belongs to
    media: tuple[MediaRef, ...] = ()  # the files it points at (ids only, never content)
    timer: MessageTimer | None = None  # its own com.beeper.disappearing_timer (msgtimer.py)


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
    # The delayed event it was sent from, where the homeserver says so (it shows its
    # sender ``unsigned["org.matrix.msc4140.delay_id"]``).
    delay_id: str | None = None


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
    bound: str | None = None  # the state's policy is outside this bound: enforced at it


@dataclass(frozen=True)
class InvalidPolicy:
    room_id: str
    sender: str
    event_type: str
    reason: str


@dataclass(frozen=True)
class Fired:
    """A delayed redaction the homeserver sent for ``due``, confirmed at ``at``. (Its
    ``origin_server_ts`` says nothing: a delayed event carries its scheduled time.)"""

    due: DueEvent
    at: int


@dataclass(frozen=True)
class IngestResult:
    policy_changes: tuple[PolicyChange, ...] = ()
    invalid_policies: tuple[InvalidPolicy, ...] = ()
    tracked: int = 0
    # Lethe's own redactions the event stream brought back: confirmed, now counted.
    redacted: tuple[DueEvent, ...] = ()
    # Delayed redactions the homeserver sent on Lethe's behalf, seen: confirmed, counted.
    fired: tuple[Fired, ...] = ()


@dataclass(frozen=True)
class RedactionTarget:
    """A tracked event the event stream shows redacted: what deciding about that echo
    needs (see echoes.py)."""

    status: EventStatus | int  # an int: a status of a newer version, none of these rules
    redaction_id: str | None  # of the redaction the homeserver accepted from Lethe
    due: DueEvent  # the row (sender, txn_id set once Lethe began to send a redaction)
