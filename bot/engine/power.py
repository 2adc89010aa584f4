"""Who may do what in a room, from ``m.room.create`` and ``m.room.power_levels``.

Since room version 12 the room's creators (the create event's sender and its
``additional_creators``) have unlimited power and are not listed in the power
levels, so the create event must be read too (matrix-nio's helpers do not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_REDACT = 50
DEFAULT_STATE = 50


def _creators_privileged(room_version: str) -> bool:
    if room_version.isdigit():
        return int(room_version) >= 12
    return room_version.startswith("org.matrix.hydra")


def _level(value: object, default: int) -> int:
    # Old room versions allow levels as strings.
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


@dataclass(frozen=True)
class PowerState:
    creators: frozenset[str] = frozenset()
    users: Mapping[str, int] = field(default_factory=dict)
    users_default: int = 0
    events: Mapping[str, int] = field(default_factory=dict)
    state_default: int = DEFAULT_STATE
    redact: int = DEFAULT_REDACT

    @classmethod
    def from_state(
        cls, create: Mapping[str, Any] | None, power_levels: Mapping[str, Any] | None
    ) -> PowerState:
        """``create`` is the whole create event (its sender matters); ``power_levels``
        is the power levels event's content, or None when the room has none."""
        creators: frozenset[str] = frozenset()
        creator: str | None = None
        if create:
            content = create.get("content") or {}
            version = str(content.get("room_version", "1"))
            creator = create.get("sender") if isinstance(create.get("sender"), str) else None
            if _creators_privileged(version):
                extra = content.get("additional_creators") or []
                creators = frozenset(
                    [creator] if creator else []
                ) | frozenset(u for u in extra if isinstance(u, str))
        if power_levels is None:
            # No power levels event: the creator has 100, everyone else 0.
            users = {creator: 100} if creator else {}
            return cls(creators, users, 0, {}, 0, DEFAULT_REDACT)
        raw_users = power_levels.get("users")
        users = (
            {u: _level(v, 0) for u, v in raw_users.items() if isinstance(u, str)}
            if isinstance(raw_users, Mapping)
            else {}
        )
        raw_events = power_levels.get("events")
        events = (
            {t: _level(v, DEFAULT_STATE) for t, v in raw_events.items() if isinstance(t, str)}
            if isinstance(raw_events, Mapping)
            else {}
        )
        return cls(
            creators,
            users,
            _level(power_levels.get("users_default"), 0),
            events,
            _level(power_levels.get("state_default"), DEFAULT_STATE),
            _level(power_levels.get("redact"), DEFAULT_REDACT),
        )

    def level(self, user_id: str) -> float:
        if user_id in self.creators:
            return math.inf
        return self.users.get(user_id, self.users_default)

    def needed_for_state(self, event_type: str) -> int:
        return self.events.get(event_type, self.state_default)

    def can_send_state(self, user_id: str, event_type: str) -> bool:
        return self.level(user_id) >= self.needed_for_state(event_type)

    def can_redact_others(self, user_id: str) -> bool:
        return self.level(user_id) >= self.redact


def describe_level(level: float) -> str:
    return "creator" if math.isinf(level) else str(int(level))
