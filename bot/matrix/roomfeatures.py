"""The timers a room accepts, published as ``com.beeper.room_features`` (the
``disappearing_timer`` capability of mautrix-go's event/capabilities.go), so
Beeper-compatible clients can offer a picker.

Other keys of an existing event (a bridge's) are kept; a room without one gets the
features a plain Matrix room has, so a client reading the event does not turn off
replies or edits there. Written only where the bot may send it and the content
differs from what is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.engine.bounds import Bounds
from bot.engine.policy import Mode, Policy
from bot.matrix.api import MatrixHttp
from bot.matrix.statewrite import StateProblem, read_state, write_state

ROOM_FEATURES_TYPE = "com.beeper.room_features"
_S = 1000
# What a picker offers by default: Signal's and WhatsApp's choices, from 30 s to 90 days.
DEFAULT_TIMERS_MS: tuple[int, ...] = (
    30 * _S, 5 * 60 * _S, 3600 * _S, 8 * 3600 * _S, 86400 * _S, 7 * 86400 * _S,
    28 * 86400 * _S, 90 * 86400 * _S,
)
_FULL = 2  # CapLevelFullySupported
# A plain Matrix room, for a room that has no room_features event yet.
_MATRIX_ROOM: dict[str, Any] = {
    "reply": _FULL, "edit": _FULL, "delete": _FULL, "reaction": _FULL, "thread": _FULL,
    "read_receipts": True, "typing_notifications": True,
}


def accepted_timers(shortest_ms: int | None = None, longest_ms: int | None = None,
                    current: Policy | None = None) -> tuple[int, ...]:
    """The timers a room accepts, within [``shortest_ms``, ``longest_ms``] (the
    operator's bounds; None: no bound), with the room's own timer among them."""
    timers = set(DEFAULT_TIMERS_MS)
    if current is not None and current.timer_ms is not None:
        timers.add(current.timer_ms)
    return tuple(sorted(t for t in timers if (shortest_ms is None or t >= shortest_ms)
                        and (longest_ms is None or t <= longest_ms)))


def disappearing_timer(timers: tuple[int, ...], off_allowed: bool = True) -> dict[str, Any]:
    """The capability: both of Lethe's modes, and "" (off) where off is allowed."""
    types = [Mode.AFTER_READ.value, Mode.AFTER_SEND.value]
    if off_allowed:
        types.insert(0, "")
    # omit_empty_timer: a native Matrix room, where a message without a timer is normal.
    return {"types": types, "timers": list(timers), "omit_empty_timer": True}


def bounded_capability(bounds: Bounds, current: Policy | None) -> dict[str, Any]:
    """The capability a room publishes under the operator's ``bounds``: the accepted
    timers within them (none in an only-off room, where off is the only choice), and
    off only where it is allowed."""
    if bounds.only_off:
        return {"types": [""], "timers": [], "omit_empty_timer": True}
    return disappearing_timer(accepted_timers(bounds.min_timer_ms, bounds.max_timer_ms,
                                              current), bounds.allow_off)


def with_timers(existing: Mapping[str, Any] | None, capability: Mapping[str, Any]
                ) -> dict[str, Any]:
    """``existing`` (or a plain Matrix room's features) with ``capability`` as its
    ``disappearing_timer``."""
    base = dict(existing) if existing else dict(_MATRIX_ROOM)
    base["disappearing_timer"] = dict(capability)
    return base


async def publish_timers(http: MatrixHttp, room_id: str, capability: Mapping[str, Any]
                         ) -> str | None:
    """Write the capability where it differs from what the room has; None, or why not.
    The caller checks the bot may send the event."""
    existing = await read_state(http, room_id, ROOM_FEATURES_TYPE)
    if isinstance(existing, StateProblem):
        return existing
    content = with_timers(existing, capability)
    if existing is not None and dict(existing) == content:
        return None  # already says so
    return await write_state(http, room_id, ROOM_FEATURES_TYPE, content)
