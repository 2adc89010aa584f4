"""Read-only summaries of Lethe's database, for the CLI.

Only ids, counts and times: the database holds no message content anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.engine.delayed import META_KEY as DELAYED_KEY
from bot.engine.model import STATUS_NAMES, RoomSchedule, counts_by_name
from bot.engine.store import StoreBackend

__all__ = ["STATUS_NAMES", "DelayedSummary", "RoomSchedule", "delayed_summary",
           "pending_by_status", "room_schedules"]


@dataclass(frozen=True)
class DelayedSummary:
    """Delayed redactions as the database records them (bot/engine/delayed.py)."""

    armed: int  # messages the homeserver holds a delayed redaction of
    cancels: int  # delayed redactions queued for cancelling
    in_use: bool | None  # what the front found on its last start (None: not recorded)
    reason: str  # why not, then


async def delayed_summary(store: StoreBackend) -> DelayedSummary:
    queued, _ = await store.cancels()
    try:
        last = json.loads(await store.get_meta(DELAYED_KEY) or "null")
    except ValueError:
        last = None
    last = last if isinstance(last, dict) else {}
    in_use = last.get("in_use")
    return DelayedSummary(await store.armed_count(), queued,
                          in_use if isinstance(in_use, bool) else None,
                          str(last.get("reason") or ""))


async def pending_by_status(store: StoreBackend) -> dict[str, int]:
    """Every status name, with a count (0 where none)."""
    return counts_by_name(await store.count_by_status())


async def room_schedules(store: StoreBackend) -> dict[str, RoomSchedule]:
    """Per room with anything pending: how much, and the earliest due time."""
    return await store.room_schedules()
