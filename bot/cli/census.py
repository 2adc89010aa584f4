"""Read-only summaries of Lethe's database, for the CLI and the metrics.

Only ids, counts and times: the database holds no message content anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.engine.store import FAILED, IN_FLIGHT, PARKED, SENT, WAITING, Store

STATE_NAMES = {
    WAITING: "waiting", IN_FLIGHT: "in_flight", SENT: "sent", PARKED: "parked", FAILED: "failed",
}


@dataclass(frozen=True)
class RoomSchedule:
    pending: int  # not yet redacted and not given up on
    next_due: int | None  # as in `!lethe status`: overdue (parked) events count too


async def pending_by_state(store: Store) -> dict[str, int]:
    """Every state name, with a count (0 where none)."""
    counts = dict.fromkeys(STATE_NAMES.values(), 0)
    async with store.conn.execute("SELECT status, count(*) FROM events GROUP BY status") as cur:
        for status, count in await cur.fetchall():
            counts[STATE_NAMES.get(status, f"status_{status}")] = int(count)
    return counts


async def room_schedules(store: Store) -> dict[str, RoomSchedule]:
    """Per room with anything pending: how much, and the earliest due time."""
    # NOT INDEXED: grouping along the (room_id, seq) index costs a row lookup per event;
    # one sequential scan is about 4x faster (100k events: 98 ms instead of 378 ms).
    async with store.conn.execute(
        "SELECT room_id, count(*), min(due_at) FROM events NOT INDEXED WHERE status != ? "
        "GROUP BY room_id",
        (FAILED,),
    ) as cur:
        return {
            room_id: RoomSchedule(int(count), None if due is None else int(due))
            for room_id, count, due in await cur.fetchall()
        }
