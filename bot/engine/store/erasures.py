"""The erasure ledger: which events Lethe redacted in which room, and when it
confirmed each. Ids and times only; written with the confirmation itself
(events.finish_redacted) and pruned by age (engine/ledger.py)."""

from __future__ import annotations

from bot.engine.model import Erasure
from bot.engine.store.conn import Connection

_COLUMNS = "room_id, event_id, redacted_at"


async def record(conn: Connection, room_id: str, event_id: str, now_ms: int) -> None:
    await conn.execute(
        f"INSERT INTO erasures ({_COLUMNS}) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (room_id, event_id, now_ms),
    )


async def prune(conn: Connection, before_ms: int) -> int:
    cur = await conn.execute("DELETE FROM erasures WHERE redacted_at < ?", (before_ms,))
    return max(cur.rowcount, 0)


async def in_room(conn: Connection, room_id: str, since_ms: int | None) -> list[Erasure]:
    async with conn.execute(
        f"SELECT {_COLUMNS} FROM erasures WHERE room_id = ? AND redacted_at >= ? "
        "ORDER BY redacted_at, event_id",
        (room_id, since_ms or 0),
    ) as cur:
        return [Erasure(*row) for row in await cur.fetchall()]


async def sample(conn: Connection, each: int) -> list[Erasure]:
    """The ``each`` oldest and ``each`` newest entries (fewer when the ledger is short),
    oldest first, each once."""
    found: dict[tuple[str, str], Erasure] = {}
    for order in ("ASC", "DESC"):
        async with conn.execute(
            f"SELECT {_COLUMNS} FROM erasures ORDER BY redacted_at {order} LIMIT ?", (each,)
        ) as cur:
            for row in await cur.fetchall():
                entry = Erasure(*row)
                found[(entry.room_id, entry.event_id)] = entry
    return sorted(found.values(), key=lambda e: (e.redacted_at, e.event_id))


async def oldest(conn: Connection) -> int | None:
    async with conn.execute("SELECT min(redacted_at) FROM erasures") as cur:
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])

