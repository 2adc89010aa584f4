"""Read-only summaries of Lethe's database, for the CLI.

Only ids, counts and times: the database holds no message content anyway.
"""

from __future__ import annotations

from bot.engine.model import STATUS_NAMES, RoomSchedule, counts_by_name
from bot.engine.store import StoreBackend

__all__ = ["STATUS_NAMES", "RoomSchedule", "pending_by_status", "room_schedules"]


async def pending_by_status(store: StoreBackend) -> dict[str, int]:
    """Every status name, with a count (0 where none)."""
    return counts_by_name(await store.count_by_status())


async def room_schedules(store: StoreBackend) -> dict[str, RoomSchedule]:
    """Per room with anything pending: how much, and the earliest due time."""
    return await store.room_schedules()
