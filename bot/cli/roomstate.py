"""A room as its current state describes it, from the homeserver (GET /state):
name, aliases, encryption, members, power, the retention policy in force (each
policy event read by bot/matrix/roomstate.py) and its ``m.room.retention``. Pure: no
I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    POLICY_EVENT_TYPE,
    POLICY_STATE_TYPES,
    Policy,
    PolicyError,
    StatePolicy,
    resolve_policy,
)
from bot.engine.power import PowerState
from bot.matrix.retention import RETENTION_EVENT_TYPE, RetentionEvent
from bot.matrix.roomstate import PowerSource, state_policy


@dataclass(frozen=True)
class PolicyEventView:
    """One of the two policy state events as it stands, valid or not."""

    event_type: str
    sender: str
    origin_ts: int
    content: Mapping[str, Any]
    problem: str | None  # why the engine ignores it, if it does
    raw: Mapping[str, Any]  # the whole event (history walks need its replaces_state)


@dataclass(frozen=True)
class RoomState:
    room_id: str
    name: str | None
    canonical_alias: str | None
    alt_aliases: tuple[str, ...]
    encrypted: bool
    members: tuple[str, ...]  # joined, sorted
    power: PowerState
    policy: Policy
    policy_sender: str | None
    policy_events: tuple[PolicyEventView, ...]
    created_ts: int | None
    retention: RetentionEvent = field(default_factory=RetentionEvent)  # m.room.retention

    @property
    def title(self) -> str:
        """``Planning (!abc:server)``, or just the id for a room without name or alias."""
        label = self.name or self.canonical_alias
        return f"{label} ({self.room_id})" if label else self.room_id

    @classmethod
    def from_events(
        cls, room_id: str, events: Sequence[Mapping[str, Any]], default_cap_ms: int
    ) -> RoomState:
        state: dict[tuple[str, str], Mapping[str, Any]] = {}
        for event in events:
            if isinstance(event.get("type"), str) and isinstance(event.get("state_key"), str):
                state[(event["type"], event["state_key"])] = event

        def content(event_type: str) -> Mapping[str, Any]:
            found = state.get((event_type, ""), {}).get("content")
            return found if isinstance(found, Mapping) else {}

        name = content("m.room.name").get("name")
        alias = content("m.room.canonical_alias").get("alias")
        alt = content("m.room.canonical_alias").get("alt_aliases")
        members = sorted(
            key for (kind, key), event in state.items()
            if kind == "m.room.member" and (event.get("content") or {}).get("membership") == "join"
        )
        create = state.get(("m.room.create", ""))
        views: list[PolicyEventView] = []
        valid: dict[str, StatePolicy] = {}
        for event_type in POLICY_STATE_TYPES:
            policy_event = state.get((event_type, ""))
            if policy_event is None:
                continue
            problem = None
            try:
                valid[event_type] = state_policy(policy_event, default_cap_ms)
            except PolicyError as exc:
                problem = str(exc)
            views.append(PolicyEventView(
                event_type, str(policy_event.get("sender", "")),
                int(policy_event.get("origin_server_ts", 0)),
                content(event_type), problem, policy_event,
            ))
        winner = resolve_policy(valid.get(POLICY_EVENT_TYPE), valid.get(BEEPER_EVENT_TYPE))
        created = create.get("origin_server_ts") if create else None
        return cls(
            room_id=room_id,
            name=name if isinstance(name, str) and name else None,
            canonical_alias=alias if isinstance(alias, str) and alias else None,
            alt_aliases=tuple(a for a in alt if isinstance(a, str)) if isinstance(alt, list)
            else (),
            encrypted=("m.room.encryption", "") in state,
            members=tuple(members),
            power=PowerSource.of(state.values()).power,
            policy=winner.policy if winner else Policy.off(),
            policy_sender=winner.sender if winner else None,
            policy_events=tuple(views),
            created_ts=created if isinstance(created, int) else None,
            retention=RetentionEvent.of(state.get((RETENTION_EVENT_TYPE, ""))),
        )
