"""Receipts, timeline positions, and the SQL of the after_read rule (bot/engine/reads.py
says what it is: readers_left counts, per unread after_read event, its required readers
who have not read it, so a receipt costs what it newly covers)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.engine.model import ReceiptMove
from bot.engine.reads import plan_cover_many
from bot.engine.store.conn import Connection
from bot.engine.store.sql import UNREAD, read_deadline

# Whether member m has read event e (thread keys as in ``reads.receipt_thread``).
_HAS_READ = """
    EXISTS (
        SELECT 1 FROM receipts r
        WHERE r.room_id = m.room_id AND r.user_id = m.user_id AND r.seq >= e.seq
          AND r.thread IN ('', coalesce(e.thread_id, 'main'))
    )
"""

# readers_left of an unread event e from scratch: its required readers who have not read
# it. Costs members per event: for migrations and tools, never per receipt.
_READERS_LEFT = f"""
    SELECT count(*) FROM members m
    WHERE m.room_id = e.room_id AND m.join_seq < e.seq AND m.user_id != e.sender
      AND NOT {_HAS_READ}
"""
RECOUNT = f"""
UPDATE events AS e SET readers_left = ({_READERS_LEFT})
WHERE e.room_id = :room_id AND {UNREAD}
"""

# An event a reader's receipt on key :thread newly covers, moving from :old to :new,
# if the reader is required for it (joined before it, not its sender) and has not read
# it already through its other key (the unthreaded one, or the event's own thread).
_NEWLY_COVERED = f"""
    e.room_id = :room_id AND {UNREAD}
    AND e.seq > :old AND e.seq <= :new
    AND (:thread = '' OR coalesce(e.thread_id, 'main') = :thread)
    AND e.sender != :user_id
    AND e.seq > (SELECT join_seq FROM members WHERE room_id = :room_id AND user_id = :user_id)
    AND NOT EXISTS (
        SELECT 1 FROM receipts r
        WHERE r.room_id = :room_id AND r.user_id = :user_id AND r.seq >= e.seq
          AND r.thread = CASE :thread WHEN '' THEN coalesce(e.thread_id, 'main') ELSE '' END
    )
"""

# One statement: count the reader, and an event whose last required reader (or, with
# readers any, first) this is becomes read at :read_at, due :timer after (never later
# than its cap). SET sees the old readers_left: "<= 1" means "now 0".
_COVER = f"""
UPDATE events AS e
SET readers_left = CASE WHEN e.readers_any <> 0 THEN 0 ELSE e.readers_left - 1 END,
    read_at = CASE WHEN e.readers_any <> 0 OR e.readers_left <= 1 THEN :read_at END,
    due_at = CASE WHEN e.readers_any <> 0 OR e.readers_left <= 1
        THEN {read_deadline(":read_at", "e.due_at", "e.timer_ms")}
        ELSE e.due_at END
WHERE {_NEWLY_COVERED}
"""

# Member :user_id leaves: it stops being required for the unread events it had not read.
_LEAVE = f"""
UPDATE events AS e SET readers_left = e.readers_left - 1
WHERE e.room_id = :room_id AND {UNREAD}
  AND e.sender != :user_id
  AND e.seq > (SELECT join_seq FROM members WHERE room_id = :room_id AND user_id = :user_id)
  AND NOT EXISTS (
      SELECT 1 FROM receipts r
      WHERE r.room_id = :room_id AND r.user_id = :user_id AND r.seq >= e.seq
        AND r.thread IN ('', coalesce(e.thread_id, 'main'))
  )
"""

# Events nobody required is left to read (after a leave): read at :read_at.
_MARK_READ = f"""
UPDATE events AS e
SET read_at = :read_at,
    due_at = {read_deadline(":read_at")}
WHERE e.room_id = :room_id AND {UNREAD}
  AND e.seq <= :max_seq AND e.readers_left <= 0
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


async def move_receipt(
    conn: Connection, room_id: str, user_id: str, thread: str, seq: int
) -> int | None:
    async with conn.execute(
        "SELECT seq FROM receipts WHERE room_id = ? AND user_id = ? AND thread = ?",
        (room_id, user_id, thread),
    ) as cur:
        row = await cur.fetchone()
    old = 0 if row is None else int(row[0])
    if row is not None and seq <= old:
        return None
    await conn.execute(
        "INSERT INTO receipts (room_id, user_id, thread, seq) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (room_id, user_id, thread) DO UPDATE SET seq = excluded.seq",
        (room_id, user_id, thread, seq),
    )
    return old


async def event_seq(conn: Connection, room_id: str, event_id: str) -> int | None:
    rows = await conn.execute_fetchall(
        "SELECT seq FROM positions WHERE room_id = ? AND event_id = ? "
        "UNION ALL SELECT seq FROM events WHERE event_id = ? AND room_id = ? LIMIT 1",
        (room_id, event_id, event_id, room_id))
    return next((int(row[0]) for row in rows), None)


async def insert_positions(
    conn: Connection, rows: Sequence[tuple[str, str, int]]
) -> None:
    await conn.executemany(
        "INSERT INTO positions (room_id, event_id, seq) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        rows,
    )


async def cap_positions(conn: Connection, room_id: str, keep: int) -> int:
    cur = await conn.execute(
        "DELETE FROM positions WHERE room_id = :room AND seq < ("
        "SELECT seq FROM positions WHERE room_id = :room "
        "ORDER BY seq DESC LIMIT 1 OFFSET :skip)",
        {"room": room_id, "skip": keep - 1},
    )
    return cur.rowcount


async def prune_positions(conn: Connection, room_id: str) -> int:
    cur = await conn.execute(_PRUNE_POSITIONS, {"room_id": room_id})
    return cur.rowcount


async def has_unread(conn: Connection, room_id: str) -> bool:
    rows = await conn.execute_fetchall(
        f"SELECT 1 FROM events AS e WHERE e.room_id = ? AND {UNREAD} LIMIT 1", (room_id,))
    return any(True for _ in rows)


async def cover(
    conn: Connection, room_id: str, user_id: str, thread: str,
    old_seq: int, new_seq: int, read_at: int,
) -> int:
    cur = await conn.execute(_COVER, {
        "room_id": room_id, "user_id": user_id, "thread": thread,
        "old": old_seq, "new": new_seq, "read_at": read_at,
    })
    return cur.rowcount


async def cover_many(
    conn: Connection, room_id: str, moves: Sequence[ReceiptMove]
) -> int:
    if not moves:
        return 0
    users = sorted({m.user_id for m in moves})
    joined: dict[str, int] = {}
    stored: dict[tuple[str, str], int] = {}
    for start in range(0, len(users), 500):
        chunk = users[start:start + 500]
        marks = ",".join("?" * len(chunk))
        async with conn.execute(
            f"SELECT user_id, join_seq FROM members WHERE room_id = ? AND user_id IN ({marks})",
            (room_id, *chunk),
        ) as cur:
            joined.update((row[0], int(row[1])) for row in await cur.fetchall())
        async with conn.execute(
            f"SELECT user_id, thread, seq FROM receipts WHERE room_id = ? AND user_id IN ({marks})",
            (room_id, *chunk),
        ) as cur:
            stored.update(((row[0], row[1]), int(row[2])) for row in await cur.fetchall())
    low = min(m.old for m in moves)
    high = max(m.new for m in moves)
    async with conn.execute(
        f"SELECT e.event_id, e.seq, coalesce(e.thread_id, 'main'), e.sender, e.readers_any, "
        f"e.readers_left FROM events AS e WHERE e.room_id = ? AND {UNREAD} "
        "AND e.seq > ? AND e.seq <= ? ORDER BY e.seq",
        (room_id, low, high),
    ) as cur:
        events = list(await cur.fetchall())
    changes = plan_cover_many(moves, users, joined, stored, events)
    await conn.executemany(
        "UPDATE events SET readers_left = ?1, "
        "read_at = CASE WHEN ?2 <> 0 THEN ?3 END, "
        f"due_at = CASE WHEN ?2 <> 0 THEN {read_deadline('?3')} "
        "ELSE due_at END "
        "WHERE event_id = ?4",
        changes,
    )
    return len(changes)


async def leave(conn: Connection, room_id: str, user_id: str) -> int:
    cur = await conn.execute(_LEAVE, {"room_id": room_id, "user_id": user_id})
    return cur.rowcount


async def mark_read(conn: Connection, room_id: str, read_at: int, max_seq: int) -> int:
    cur = await conn.execute(
        _MARK_READ, {"room_id": room_id, "read_at": read_at, "max_seq": max_seq}
    )
    return cur.rowcount
