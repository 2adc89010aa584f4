"""A room's power and retention policy, read from its state events: the one reader
the bot, the bridge and the admin commands share. Pure: no I/O.

``PowerSource`` keeps the two events a room's power comes from; ``state_policy`` reads
one policy state event as the engine reads it; ``checked`` marks a policy event
refused when its sender may not change the policy under the power levels in force at
its point of the timeline (policy_state.policy_refusal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bot.engine.model import PolicyEvent, TimelineItem
from bot.engine.policy import PolicyError, StatePolicy, policy_from_event
from bot.engine.power import PowerState
from bot.matrix.events import redacted_by as redaction_sender
from bot.matrix.policy_state import policy_refusal


@dataclass
class PowerSource:
    """The events a room's power comes from, as last seen: the whole ``m.room.create``
    event (its sender matters) and the content of ``m.room.power_levels``."""

    create: Mapping[str, Any] | None = None
    levels: Mapping[str, Any] | None = None  # None: the room has none (yet)

    def observe(self, event: Mapping[str, Any]) -> bool:
        """Take ``event`` if it is one of the two; whether it was."""
        if event.get("state_key") != "":
            return False
        if event.get("type") == "m.room.create":
            self.create = event
        elif event.get("type") == "m.room.power_levels":
            content = event.get("content")
            self.levels = content if isinstance(content, Mapping) else {}
        else:
            return False
        return True

    @classmethod
    def of(cls, events: Iterable[Mapping[str, Any]]) -> PowerSource:
        """From a room's state events (the last of each kind counts)."""
        source = cls()
        for event in events:
            source.observe(event)
        return source

    @property
    def power(self) -> PowerState:
        return PowerState.from_state(self.create, self.levels)


def state_policy(event: Mapping[str, Any], default_cap_ms: int) -> StatePolicy:
    """One policy state event read as the engine reads it; PolicyError if invalid."""
    event_type = event.get("type")
    redacted_by = redaction_sender(event)
    if redacted_by is not None:
        # Its content is gone, which is no "off": the engine keeps what was in force.
        raise PolicyError(f"redacted{' by ' + redacted_by if redacted_by else ''}; a "
                          "redaction does not change the policy")
    policy = policy_from_event(event_type, event.get("content"), default_cap_ms)
    sender = event.get("sender")
    ts = event.get("origin_server_ts")
    return StatePolicy(
        policy, str(event_type), sender if isinstance(sender, str) else "",
        ts if isinstance(ts, int) else 0,
    )


def checked(item: TimelineItem, power: PowerState) -> TimelineItem:
    """A policy event marked refused if its sender may not send both policy state
    events under ``power``; any other item as it is."""
    if not isinstance(item, PolicyEvent) or item.redacted_by is not None:
        return item
    reason = policy_refusal(power, item.sender)
    return item if reason is None else replace(item, refused=reason)
