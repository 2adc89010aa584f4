"""A room's policy as its state events say it: the two policy event types combined
(the newer wins), and the events that change nothing (redacted, or from a sender
without the power). Part of ingest; no I/O."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bot.engine.bounds import Bounds
from bot.engine.model import InvalidPolicy, PolicyEvent
from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    POLICY_EVENT_TYPE,
    Policy,
    PolicyError,
    StatePolicy,
    policy_from_event,
    resolve_policy,
)

log = logging.getLogger(__name__)


@dataclass
class RoomState:
    """Per-room working state for one batch."""

    policy: Policy
    lethe: StatePolicy | None
    beeper: StatePolicy | None
    sender: str | None
    members: set[str]
    is_new: bool
    policy_dirty: bool = False  # the stored state events changed
    changed: bool = False  # the effective policy changed
    changed_by: str | None = None
    read_dirty: bool = False
    read_at: int = 0
    tracked_ids: set[str] = field(default_factory=set)
    positions: int = 0  # timeline positions stored in this batch
    bounds: Bounds = field(default_factory=Bounds)  # the operator's, for this room
    bound: str | None = None  # the bound the state's policy is outside of (enforced at it)


def apply_policy_event(room_id: str, room: RoomState, event: PolicyEvent,
                       invalid: list[InvalidPolicy], default_cap_ms: int) -> None:
    """A policy state event in the timeline (or the state before it): the room's
    policy becomes what its state events say together, unless the event is ignored."""
    if event.redacted_by is not None or event.refused is not None:
        _ignored(room_id, room, event, invalid)
        return
    try:
        policy = policy_from_event(
            event.event_type, event.content, default_cap_ms)
    except PolicyError as exc:
        log.warning("ignoring invalid %s in %s from %s: %s",
                    event.event_type, room_id, event.sender, exc)
        if event.in_timeline:
            invalid.append(InvalidPolicy(room_id, event.sender, event.event_type, str(exc)))
        return
    state = StatePolicy(policy, event.event_type, event.sender, event.origin_ts)
    if event.event_type == POLICY_EVENT_TYPE:
        room.lethe = state
    elif event.event_type == BEEPER_EVENT_TYPE:
        room.beeper = state
    winner = resolve_policy(room.lethe, room.beeper)
    declared = winner.policy if winner else Policy.off()
    # Outside the operator's bounds: enforced at the nearest bound, and said (a change
    # in the timeline is announced even when what is enforced stays the same).
    new_policy, room.bound = room.bounds.clamp(declared), room.bounds.check(declared)
    if room.bound is not None:
        log.warning("the policy %s sets in %s is outside the bounds (%s); enforcing %s",
                    event.sender, room_id, room.bound, new_policy.describe())
    if new_policy != room.policy or (room.bound is not None and event.in_timeline):
        room.changed = True
        room.changed_by = event.sender
    room.policy_dirty = True
    room.policy, room.sender = new_policy, winner.sender if winner else None


def _ignored(room_id: str, room: RoomState, event: PolicyEvent,
             invalid: list[InvalidPolicy]) -> None:
    """A policy event that changes nothing, and the previous policy stays: one whose
    content a redaction pruned away (that is not an "off"), or one from a sender who
    may not change the policy (the front says why)."""
    known = room.lethe if event.event_type == POLICY_EVENT_TYPE else room.beeper
    if known is not None and (known.sender, known.origin_ts) == (event.sender,
                                                                 event.origin_ts):
        # The event Lethe applies already, seen again (the state after a restart):
        # since redacted, or its sender lost power since. Nothing to say again.
        log.info("keeping the policy of %s: its %s event is %s", room_id, event.event_type,
                 "redacted" if event.redacted_by is not None else "from a sender "
                 "without the power to set it now")
        return
    if event.redacted_by is not None:
        by = f" by {event.redacted_by}" if event.redacted_by else ""
        reason = (f"it was redacted{by}, and a redaction does not change the policy "
                  "(to turn it off, set it to off)")
    else:
        reason = event.refused or "refused"
    log.warning("ignoring %s in %s from %s: %s", event.event_type, room_id, event.sender,
                reason)
    if event.in_timeline:
        invalid.append(InvalidPolicy(room_id, event.sender, event.event_type, reason))
