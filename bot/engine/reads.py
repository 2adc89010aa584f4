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
WHERE e.room_id = :room_id AND e.mode = 2 AND e.read_at IS NULL AND e.status IN (0, 2)
  AND e.seq <= :max_seq
  AND CASE e.readers_any
        WHEN 0 THEN NOT EXISTS ({_REQUIRED} AND NOT {_HAS_READ})
        ELSE (NOT EXISTS ({_REQUIRED}) OR EXISTS ({_REQUIRED} AND {_HAS_READ}))
      END
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
