"""A deadline of an event's own (``!lethe expire``, bot/engine/msgtimer.py): moved
earlier, never later."""

from __future__ import annotations

from bot.engine.msgtimer import Expiry, Own
from bot.engine.store.conn import Connection
from bot.engine.store.sql import PARKED, WAITING


async def expire(conn: Connection, room_id: str, event_id: str,
                 due_ms: int) -> Expiry:
    """Make the tracked ``event_id`` of ``room_id`` due at ``due_ms`` if that is earlier
    than its deadline (a receipt only ever moves due_at earlier, so it stays)."""
    async with conn.execute(
        "SELECT status, due_at FROM events WHERE event_id = ? AND room_id = ?",
        (event_id, room_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return Expiry.UNTRACKED
    if int(row[0]) not in (int(WAITING), int(PARKED)):
        return Expiry.GOING
    if row[1] is not None and int(row[1]) <= due_ms:
        return Expiry.EARLIER
    # A delayed redaction held for a later time is now stale (sql.STALE): the armer
    # replaces it.
    await conn.execute(
        f"UPDATE events SET due_at = ?, own = {int(Own.EXPIRE)} "
        f"WHERE event_id = ? AND room_id = ? AND status IN ({WAITING}, {PARKED})",
        (due_ms, event_id, room_id),
    )
    return Expiry.SHORTENED
