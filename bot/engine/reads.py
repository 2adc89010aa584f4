"""The after_read rule: when has a message been read by its required readers?

Required readers of an event are the counted members (joined, not the bot, not
ignored) who joined before it was sent, other than its sender; members who leave
are removed and so stop being required. A public ``m.read`` receipt on event E
means "read up to and including E": it covers every event at or before E's
position. An unthreaded receipt covers all threads; a threaded one only its own
(``main`` or a thread root).

Each unread after_read event counts its required readers who have not read it yet
(``readers_left``, 0 as soon as one has under ``readers any``), so a receipt costs
what it newly covers: the unread events between the reader's previous position and
its new one, never unread events times members.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

MAIN_THREAD = "main"
UNTHREADED = ""

# An after_read event (alias ``e``) a receipt can still make due: not yet read by all
# required readers, and waiting or parked. The partial index events_unread has this
# condition (without the alias); queries must repeat it as is for SQLite to use it.
UNREAD = "e.mode = 2 AND e.read_at IS NULL AND e.status IN (0, 2)"

# Whether member m has read event e (thread keys as in ``receipt_thread``).
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
SET readers_left = CASE WHEN e.readers_any THEN 0 ELSE e.readers_left - 1 END,
    read_at = CASE WHEN e.readers_any OR e.readers_left <= 1 THEN :read_at END,
    due_at = CASE WHEN e.readers_any OR e.readers_left <= 1
        THEN min(coalesce(e.due_at, :read_at + e.timer_ms), :read_at + e.timer_ms)
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
    due_at = min(coalesce(due_at, :read_at + timer_ms), :read_at + timer_ms)
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


def receipt_thread(thread_id: str | None) -> str:
    """Key a receipt by its thread: '' unthreaded, 'main', or a thread root id."""
    return UNTHREADED if thread_id is None else thread_id


async def cover(
    conn: aiosqlite.Connection, room_id: str, user_id: str, thread: str,
    old_seq: int, new_seq: int, read_at: int,
) -> int:
    """Within a transaction, right after member ``user_id``'s receipt on ``thread`` moved
    from ``old_seq`` (0: none) to ``new_seq``: count it as a reader of what it newly
    covers. Events it was the last required reader of are read at ``read_at`` and due
    ``read_at + timer`` (never later than their cap). Returns how many events it counted
    for, read or not."""
    cur = await conn.execute(_COVER, {
        "room_id": room_id, "user_id": user_id, "thread": thread,
        "old": old_seq, "new": new_seq, "read_at": read_at,
    })
    return cur.rowcount


@dataclass(frozen=True)
class Move:
    """A member's receipt on ``thread`` that moved from ``old`` (0: none) to ``new``."""

    user_id: str
    thread: str
    old: int
    new: int
    read_at: int


async def cover_many(conn: aiosqlite.Connection, room_id: str, moves: Sequence[Move]) -> int:
    """Within a transaction, after the receipts of ``moves`` are stored: what ``cover``
    does for each, in one pass (many receipts in one batch, e.g. every member's after
    downtime, would otherwise each walk the same unread events). Costs the unread
    events they span plus moves x threads, never events x moves. Events read by this
    batch count as read at its latest read time: late by at most the batch's spread,
    never early. Returns how many events changed."""
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
    before = dict(stored)
    for move in reversed(moves):  # the earliest move of a key holds its position before
        before[(move.user_id, move.thread)] = move.old
    low = min(m.old for m in moves)
    high = max(m.new for m in moves)
    async with conn.execute(
        f"SELECT e.event_id, e.seq, coalesce(e.thread_id, 'main'), e.sender, e.readers_any, "
        f"e.readers_left FROM events AS e WHERE e.room_id = ? AND {UNREAD} "
        "AND e.seq > ? AND e.seq <= ? ORDER BY e.seq",
        (room_id, low, high),
    ) as cur:
        events = list(await cur.fetchall())
    by_thread: dict[str, list[int]] = {}
    for index, row in enumerate(events):
        by_thread.setdefault(row[2], []).append(index)

    def newly(user: str, thread: str) -> tuple[int, int]:
        """The positions in ``thread`` the user's receipts newly cover: (lo, hi]."""
        was = max(before.get((user, UNTHREADED), 0), before.get((user, thread), 0))
        now = max(stored.get((user, UNTHREADED), 0), stored.get((user, thread), 0))
        return max(was, joined.get(user, now)), now

    counts = [0] * len(events)
    for thread, indexes in by_thread.items():
        seqs = [events[i][1] for i in indexes]
        steps = [0] * (len(indexes) + 1)
        for user in users:
            lo, hi = newly(user, thread)
            if hi > lo:
                steps[bisect.bisect_right(seqs, lo)] += 1
                steps[bisect.bisect_right(seqs, hi)] -= 1
        running = 0
        for n, i in enumerate(indexes):
            running += steps[n]
            counts[i] = running
    read_at = max(m.read_at for m in moves)
    changes = []
    for row, count in zip(events, counts, strict=True):
        event_id, seq, thread, sender, readers_any, left = row
        if sender in joined:  # the sender is no reader of its own message
            lo, hi = newly(sender, thread)
            count -= lo < seq <= hi
        if count <= 0:
            continue
        left = 0 if readers_any else left - count
        changes.append((left, left <= 0, read_at, event_id))
    await conn.executemany(
        "UPDATE events SET readers_left = ?1, "
        "read_at = CASE WHEN ?2 THEN ?3 END, "
        "due_at = CASE WHEN ?2 THEN min(coalesce(due_at, ?3 + timer_ms), ?3 + timer_ms) "
        "ELSE due_at END "
        "WHERE event_id = ?4",
        changes,
    )
    return len(changes)


async def leave(conn: aiosqlite.Connection, room_id: str, user_id: str) -> int:
    """Within a transaction, before member ``user_id`` and its receipts are removed: it is
    no longer a reader the room's unread events wait for. ``mark_read`` then finds
    those it was the last one of. Returns how many events waited for it."""
    cur = await conn.execute(_LEAVE, {"room_id": room_id, "user_id": user_id})
    return cur.rowcount


async def mark_read(
    conn: aiosqlite.Connection, room_id: str, read_at: int, max_seq: int
) -> int:
    """Within a transaction: every unread after_read event of the room up to ``max_seq``
    that no required reader is left to read is marked read at ``read_at`` and rescheduled
    to ``read_at + timer`` (never later than its cap). Returns how many."""
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
