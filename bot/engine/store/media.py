"""The files of tracked messages (``media``): their ids only, from the message's
arrival until its file is deleted, and then for the audit until the ledger ends.

A row is HELD while its message is there. Lethe's confirmed redaction of the
message (``finish_redacted``) or somebody else's (``forget``) makes it DUE; a
message dropped without being redacted (its room left, a follower forgotten)
takes its HELD rows along, so no file is deleted before its message's deadline.
A file is handed out for deletion only once no tracked message still holds it;
then every DUE row of it is settled together (DELETED, or REMOTE for another
server's file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.engine.model import DueMedia, MediaCounts, MediaState, TrackedEvent
from bot.engine.store.conn import Connection
from bot.engine.store.sql import MEDIA_DELETED, MEDIA_DUE, MEDIA_HELD, MEDIA_REMOTE

# A due file no tracked message still holds (alias ``m``).
_FREE = (f"m.state = {MEDIA_DUE} AND NOT EXISTS (SELECT 1 FROM media AS h "
         "WHERE h.server = m.server AND h.media_id = m.media_id "
         f"AND h.state = {MEDIA_HELD})")


async def insert_media(conn: Connection, rows: Sequence[TrackedEvent]) -> None:
    """With the events: a row seen twice (backfill overlap) keeps its first state."""
    media = [(r.event_id, m.server, m.media_id, r.room_id) for r in rows for m in r.media]
    if media:
        await conn.executemany(
            "INSERT INTO media (event_id, server, media_id, room_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING", media)


async def message_gone(conn: Connection, event_id: str, now_ms: int) -> None:
    """The message is redacted: its files are due (in the same transaction)."""
    await conn.execute(
        f"UPDATE media SET state = {MEDIA_DUE}, changed_at = ?, retry_at = ? "
        f"WHERE event_id = ? AND state = {MEDIA_HELD}",
        (now_ms, now_ms, event_id))


async def drop_held_of_room(conn: Connection, room_id: str) -> None:
    """Lethe left the room: its messages stay, and so do their files. Due ones, whose
    message is gone already, are still deleted."""
    await conn.execute(f"DELETE FROM media WHERE room_id = ? AND state = {MEDIA_HELD}",
                       (room_id,))


async def due_files(conn: Connection, now_ms: int, limit: int) -> list[DueMedia]:
    """Up to ``limit`` files due by ``now_ms`` that no tracked message still holds,
    the longest waiting first."""
    async with conn.execute(
        "SELECT m.server, m.media_id, max(m.attempts) FROM media AS m INDEXED BY media_due "
        f"WHERE {_FREE} AND m.retry_at <= ? "
        "GROUP BY m.server, m.media_id ORDER BY min(m.retry_at) LIMIT ?",
        (now_ms, limit),
    ) as cur:
        return [DueMedia(row[0], row[1], int(row[2])) for row in await cur.fetchall()]


async def next_due(conn: Connection) -> int | None:
    """When the earliest due file no tracked message holds is to be tried."""
    async with conn.execute(
        f"SELECT min(m.retry_at) FROM media AS m INDEXED BY media_due WHERE {_FREE}"
    ) as cur:
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def settle(conn: Connection, server: str, media_id: str,
                 state: MediaState, now_ms: int) -> None:
    """Every due row of the file is done: DELETED or REMOTE."""
    assert state in (MediaState.DELETED, MediaState.REMOTE)
    await conn.execute(
        "UPDATE media SET state = ?, changed_at = ?, retry_at = NULL "
        f"WHERE server = ? AND media_id = ? AND state = {MEDIA_DUE}",
        (int(state), now_ms, server, media_id))


async def retry(conn: Connection, server: str, media_id: str,
                retry_at: int) -> None:
    await conn.execute(
        "UPDATE media SET retry_at = ?, attempts = attempts + 1 "
        f"WHERE server = ? AND media_id = ? AND state = {MEDIA_DUE}",
        (retry_at, server, media_id))


async def prune(conn: Connection, before_ms: int) -> int:
    """Forget settled files older than the ledger; returns how many rows went."""
    cur = await conn.execute(
        f"DELETE FROM media WHERE state IN ({MEDIA_DELETED}, {MEDIA_REMOTE}) "
        "AND changed_at < ?", (before_ms,))
    return int(cur.rowcount)


async def counts(conn: Connection, room_id: str | None) -> MediaCounts:
    """Files by state (a file two messages point at counts once)."""
    sql = "SELECT state, count(DISTINCT server || '/' || media_id) FROM media"
    args: tuple[Any, ...] = ()
    if room_id is not None:
        sql += " WHERE room_id = ?"
        args = (room_id,)
    async with conn.execute(sql + " GROUP BY state", args) as cur:
        found = {int(state): int(count) for state, count in await cur.fetchall()}
    return MediaCounts(*(found.get(int(state), 0) for state in (
        MediaState.HELD, MediaState.DUE, MediaState.DELETED, MediaState.REMOTE)))


async def files_of(conn: Connection, event_ids: Sequence[str]
                   ) -> list[tuple[str, str, str, MediaState]]:
    """(event_id, server, media_id, state) of the files these events pointed at."""
    found: list[tuple[str, str, str, MediaState]] = []
    ids = list(event_ids)
    for start in range(0, len(ids), 500):  # under SQLite's limit on parameters
        chunk = ids[start:start + 500]
        async with conn.execute(
            "SELECT event_id, server, media_id, state FROM media WHERE event_id IN "
            f"({', '.join('?' * len(chunk))}) ORDER BY event_id, server, media_id", chunk,
        ) as cur:
            found += [(e, s, m, MediaState(state)) for e, s, m, state in await cur.fetchall()]
    return found
