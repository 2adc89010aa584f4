"""The after_read rule: when has a message been read by its required readers?

Required readers of an event are the counted members (joined, not the bot, not
ignored) who joined before it was sent, other than its sender; members who leave
are removed and so stop being required. A public ``m.read`` receipt on event E
means "read up to and including E": it covers every event at or before E's
position. An unthreaded receipt covers all threads; a threaded one only its own
(``main`` or a thread root).
"""

from __future__ import annotations

import aiosqlite

MAIN_THREAD = "main"
UNTHREADED = ""

# An after_read event (alias ``e``) a receipt can still make due: not yet read by all
# required readers, and waiting or parked. The partial index events_unread has this
# condition (without the alias); queries must repeat it as is for SQLite to use it.
UNREAD = "e.mode = 2 AND e.read_at IS NULL AND e.status IN (0, 2)"

# A member m has read event e.
_HAS_READ = """
    EXISTS (
        SELECT 1 FROM receipts r
        WHERE r.room_id = m.room_id AND r.user_id = m.user_id AND r.seq >= e.seq
          AND r.thread IN ('', coalesce(e.thread_id, 'main'))
    )
"""

# Required readers of e.
_REQUIRED = """
    SELECT 1 FROM members m
    WHERE m.room_id = e.room_id AND m.join_seq < e.seq AND m.user_id != e.sender
"""

_MARK_READ = f"""
UPDATE events AS e
SET read_at = :read_at,
    due_at = min(coalesce(due_at, :read_at + timer_ms), :read_at + timer_ms)
WHERE e.room_id = :room_id AND {UNREAD}
  AND e.seq <= :max_seq
  AND CASE e.readers_any
        WHEN 0 THEN NOT EXISTS ({_REQUIRED} AND NOT {_HAS_READ})
        ELSE (NOT EXISTS ({_REQUIRED}) OR EXISTS ({_REQUIRED} AND {_HAS_READ}))
      END
"""


# A receipt on position p covers events at or before p, and every event to come gets a
# later position than any stored one. So a position before the room's oldest unread
# event can never cover anything a receipt could still change: it goes. With nothing
# unread, only the newest stays (receipts mostly land there; a known position saves an
# "unknown event" log line). What stays: the positions from the oldest unread event on.
_PRUNE_POSITIONS = f"""
DELETE FROM positions
WHERE room_id = :room_id AND seq < coalesce(
    (SELECT min(e.seq) FROM events AS e WHERE e.room_id = :room_id AND {UNREAD}),
    (SELECT max(seq) FROM positions WHERE room_id = :room_id))
"""


def receipt_thread(thread_id: str | None) -> str:
    """Key a receipt by its thread: '' unthreaded, 'main', or a thread root id."""
    return UNTHREADED if thread_id is None else thread_id


async def mark_read(
    conn: aiosqlite.Connection, room_id: str, read_at: int, max_seq: int
) -> int:
    """Within a transaction: every unread after_read event of the room up to ``max_seq``
    whose readers are now satisfied is marked read at ``read_at`` and rescheduled to
    ``read_at + timer`` (never later than its cap). Returns how many."""
    cur = await conn.execute(
        _MARK_READ, {"room_id": room_id, "read_at": read_at, "max_seq": max_seq}
    )
    return cur.rowcount


async def prune_positions(conn: aiosqlite.Connection, room_id: str) -> int:
    """Within a transaction: drop the room's positions no receipt can make count any
    more (see ``_PRUNE_POSITIONS``). Returns how many went."""
    cur = await conn.execute(_PRUNE_POSITIONS, {"room_id": room_id})
    return cur.rowcount


async def has_unread(conn: aiosqlite.Connection, room_id: str) -> bool:
    """Whether the room has an event a receipt could still make due."""
    async with conn.execute(
        f"SELECT 1 FROM events AS e WHERE e.room_id = ? AND {UNREAD} LIMIT 1", (room_id,)
    ) as cur:
        return await cur.fetchone() is not None
