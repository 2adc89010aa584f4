"""Tracked events: inserting them, claiming the due ones, and every step of a
redaction's way out (sent, retried, parked, failed, done)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from bot.engine.model import (
    Delay,
    DelayState,
    DueEvent,
    EventStatus,
    PendingEvent,
    RedactionTarget,
    TrackedEvent,
)
from bot.engine.msgtimer import Own
from bot.engine.policy import Readers
from bot.engine.store import erasures, media
from bot.engine.store.conn import Connection
from bot.engine.store.sql import (
    DELAYED,
    DUE_COLUMNS,
    FAILED,
    IN_FLIGHT,
    MEDIA_HELD,
    MODE_CODE,
    PARKED,
    SCHEDULED,
    SENT,
    SHOWN_DUE,
    WAITING,
)

# How long claim_due's list of rooms with due events is reused under a backlog.
_DUE_ROOMS_TTL_MS = 1000


def due_event(row: Sequence[Any]) -> DueEvent:
    """A DueEvent from the columns ``DUE_COLUMNS`` names, in that order."""
    state = int(row[6])
    delay = None
    if state != DelayState.NONE:
        try:
            delay = Delay(DelayState(state), row[7], row[8], row[9])
        except ValueError:  # written by a newer version: leave it to that version
            delay = Delay(DelayState.NEVER, row[7], row[8], row[9])
    return DueEvent(row[0], row[1], row[2], row[3], row[4], row[5], delay)


async def queue_cancels(conn: Connection, where: str, params: dict[str, Any]) -> None:
    """Before rows matching ``where`` go: the delayed redactions scheduled for them are
    to be cancelled (store/delayed.py works the queue)."""
    await conn.execute(
        "INSERT INTO delay_cancels (delay_id, user_id, room_id, target) "
        f"SELECT delay_id, delay_by, room_id, event_id FROM events WHERE ({where}) "
        f"AND {DELAYED}",
        params,
    )


async def insert_events(conn: Connection, rows: Sequence[TrackedEvent]) -> None:
    await conn.executemany(
        "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, thread_id, parent_id, "
        "mode, timer_ms, cap_ms, readers_any, read_at, due_at, sent_at, readers_left, own) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (
                r.event_id,
                r.room_id,
                r.sender,
                r.seq,
                r.origin_ts,
                r.thread_id,
                r.parent_id,
                MODE_CODE[r.policy.mode],
                r.policy.timer_ms,
                r.policy.cap_ms,
                int(r.policy.readers is Readers.ANY),
                r.read_at,
                r.due_at,
                r.origin_ts if r.sent_at is None else r.sent_at,
                r.readers_left,
                int(r.own),
            )
            for r in rows
        ],
    )
    await media.insert_media(conn, rows)


async def known_event_ids(
    conn: Connection, event_ids: Iterable[str], room_id: str | None
) -> set[str]:
    ids = list(event_ids)
    known: set[str] = set()
    in_room = "" if room_id is None else " AND room_id = ?"
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        args = chunk if room_id is None else [*chunk, room_id]
        async with conn.execute(
            f"SELECT event_id FROM events WHERE event_id IN ({marks}){in_room}", args
        ) as cur:
            known.update(row[0] for row in await cur.fetchall())
    return known


async def pending_count(conn: Connection, room_id: str | None) -> int:
    sql = f"SELECT count(*) FROM events WHERE status != {FAILED}"
    args: tuple[Any, ...] = ()
    if room_id is not None:
        sql += " AND room_id = ?"
        args = (room_id,)
    async with conn.execute(sql, args) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def pending(
    conn: Connection, room_id: str | None, limit: int
) -> list[PendingEvent]:
    sql = f"SELECT event_id, room_id, sender, origin_ts, {SHOWN_DUE}, status, own FROM events"
    args: list[Any] = []
    if room_id is not None:
        sql += " WHERE room_id = ?"
        args.append(room_id)
    sql += " ORDER BY due_at IS NULL, due_at, seq LIMIT ?"
    args.append(limit)
    async with conn.execute(sql, args) as cur:
        return [
            PendingEvent(row[0], row[1], row[2], row[3], row[4], _status(row[5]),
                         own_kind(row[6]))
            for row in await cur.fetchall()
        ]


async def count_by_status(conn: Connection) -> dict[EventStatus | int, int]:
    async with conn.execute("SELECT status, count(*) FROM events GROUP BY status") as cur:
        return {_status(status): int(count) for status, count in await cur.fetchall()}


def own_kind(value: int) -> Own | int:
    try:
        return Own(value)
    except ValueError:
        return int(value)  # written by a newer version


def _status(value: int) -> EventStatus | int:
    try:
        return EventStatus(value)
    except ValueError:
        return int(value)  # written by a newer version


async def next_due(conn: Connection) -> int | None:
    rows = await conn.execute_fetchall(
        "SELECT min(at) FROM ("
        f"SELECT min(due_at) AS at FROM events WHERE {SCHEDULED} "
        f"UNION ALL SELECT min(check_at) FROM events WHERE status = {SENT}) AS due")
    at = next(iter(rows), (None,))[0]
    return None if at is None else int(at)


class DueRooms:
    """Rooms with due events, in turn order, and when they were listed (claim_due)."""

    def __init__(self) -> None:
        self.rooms: deque[str] = deque()
        self.listed_at = 0


async def claim_due(
    conn: Connection, due_rooms: DueRooms, now_ms: int, limit: int
) -> list[DueEvent]:
    # Two queries, each along its own index, rather than one OR the planner would
    # answer by sorting every due row.
    async with conn.execute(
        f"SELECT {DUE_COLUMNS} FROM events WHERE status = {SENT} AND check_at <= ? "
        "ORDER BY check_at LIMIT ?",
        (now_ms, limit),
    ) as cur:
        rows = [due_event(row) for row in await cur.fetchall()]
    async with conn.execute(
        f"SELECT {DUE_COLUMNS} FROM events WHERE {SCHEDULED} AND due_at <= ? "
        "ORDER BY due_at LIMIT ?",
        (now_ms, limit - len(rows) + 1),
    ) as cur:
        due = [due_event(row) for row in await cur.fetchall()]
    if len(rows) + len(due) <= limit:
        rows += due
    else:
        rows += await _claim_fairly(conn, due_rooms, now_ms, limit - len(rows))
    await conn.executemany(
        f"UPDATE events SET status = {IN_FLIGHT} WHERE event_id = ?",
        [(row.event_id,) for row in rows],
    )
    return rows


async def _claim_fairly(
    conn: Connection, due: DueRooms, now_ms: int, limit: int
) -> list[DueEvent]:
    """Up to ``limit`` due events, the rooms with due events taking turns: each gives
    its earliest, a share at a time, starting after the room served last. The rooms
    are listed by one walk over the due events, at most once a second (a room that
    comes due meanwhile waits at most that long for its turn); each share is one
    seek in events_room_due."""
    if not due.rooms or not 0 <= now_ms - due.listed_at < _DUE_ROOMS_TTL_MS:
        async with conn.execute(
            f"SELECT DISTINCT room_id FROM events WHERE {SCHEDULED} AND due_at <= ?",
            (now_ms,),
        ) as cur:
            due.rooms = deque(row[0] for row in await cur.fetchall())
        due.listed_at = now_ms
    picked: list[DueEvent] = []
    taken: set[str] = set()
    while len(picked) < limit and due.rooms:
        share = max(1, (limit - len(picked)) // len(due.rooms))
        for _ in range(len(due.rooms)):
            if len(picked) >= limit:
                break
            room_id = due.rooms[0]
            due.rooms.rotate(-1)
            async with conn.execute(
                f"SELECT {DUE_COLUMNS} FROM events INDEXED BY events_room_due "
                f"WHERE room_id = ? AND {SCHEDULED} AND due_at <= ? "
                "ORDER BY due_at LIMIT ?",
                (room_id, now_ms, share + len(taken)),
            ) as cur:
                found = [due_event(row) for row in await cur.fetchall()]
            fresh = [e for e in found if e.event_id not in taken][:share]
            if not fresh:
                due.rooms.remove(room_id)
                continue
            picked += fresh
            taken.update(e.event_id for e in fresh)
    return picked[:limit]


async def reset_in_flight(conn: Connection) -> None:
    await conn.execute(f"UPDATE events SET status = {WAITING} WHERE status = {IN_FLIGHT}")


async def record_txn(conn: Connection, event_id: str, txn_id: str) -> None:
    await conn.execute(
        "UPDATE events SET txn_id = ?, attempts = attempts + 1 WHERE event_id = ?",
        (txn_id, event_id),
    )


async def mark_sent(
    conn: Connection, event_id: str, redaction_id: str, check_at: int
) -> None:
    await conn.execute(
        f"UPDATE events SET status = {SENT}, redaction_id = ?, check_at = ? "
        f"WHERE event_id = ? AND status = {IN_FLIGHT}",
        (redaction_id, check_at, event_id),
    )


async def reschedule(conn: Connection, event_id: str, due_at: int) -> None:
    await conn.execute(
        f"UPDATE events SET status = {WAITING}, due_at = ?, redaction_id = NULL "
        "WHERE event_id = ?",
        (due_at, event_id),
    )


async def park(conn: Connection, room_id: str, event_id: str) -> None:
    await conn.execute(
        f"UPDATE events SET status = {PARKED}, redaction_id = NULL WHERE event_id = ?",
        (event_id,),
    )
    await conn.execute("UPDATE rooms SET can_redact = 0 WHERE room_id = ?", (room_id,))


async def fail(conn: Connection, room_id: str, event_id: str) -> None:
    await conn.execute(
        f"UPDATE events SET status = {FAILED}, redaction_id = NULL WHERE event_id = ?",
        (event_id,),
    )
    await conn.execute(
        "UPDATE rooms SET failed_count = failed_count + 1 WHERE room_id = ?", (room_id,)
    )


async def finish_redacted(conn: Connection, room_id: str, event_id: str,
                          now_ms: int, *, fired: bool = False) -> bool:
    async with conn.execute(
        "DELETE FROM events WHERE event_id = ? AND room_id = ? "
        "RETURNING delay_state, delay_id, delay_by", (event_id, room_id)
    ) as cur:
        gone = await cur.fetchone()
    if gone is not None:
        await conn.execute(
            "UPDATE rooms SET redacted_count = redacted_count + 1 WHERE room_id = ?",
            (room_id,),
        )
        if not fired and gone[0] in (DelayState.ARMING, DelayState.ARMED):
            # Lethe redacted it by its own request: a delayed redaction still held for it
            # (none should be: the redactor cancels first) must not redact it again.
            await conn.execute(
                "INSERT INTO delay_cancels (delay_id, user_id, room_id, target) "
                "VALUES (?, ?, ?, ?)", (gone[1], gone[2], room_id, event_id))
        await erasures.record(conn, room_id, event_id, now_ms)
    await media.message_gone(conn, event_id, now_ms)
    await _cascade(conn, room_id, event_id, now_ms)
    return gone is not None


async def _cascade(conn: Connection, room_id: str, parent_id: str, now_ms: int) -> None:
    """Lethe expired ``parent_id``: its edits, reactions and poll responses are due now.

    Rows stored before thread replies became messages of their own name their thread
    root as parent too (``thread_id = parent_id``; a relation has one type, so no
    newer row looks like that): they keep their own deadline instead."""
    await conn.execute(
        "UPDATE events SET due_at = min(coalesce(due_at, ?), ?) "
        f"WHERE parent_id = ? AND room_id = ? AND status IN ({WAITING}, {PARKED}) "
        "AND thread_id IS NOT parent_id",
        (now_ms, now_ms, parent_id, room_id),
    )
    await _drop_followers(conn, room_id, parent_id)


async def _drop_followers(conn: Connection, room_id: str, parent_id: str) -> None:
    """``parent_id`` is gone without taking its children along: those tracked only to
    follow it (sent while the policy was off, so no deadline of their own), and
    theirs in turn, are forgotten rather than left waiting forever; the others keep
    their own deadline."""
    followers = (
        "WITH RECURSIVE followers(event_id) AS ("
        " SELECT event_id FROM events"
        " WHERE parent_id = :parent AND room_id = :room AND due_at IS NULL"
        f" AND status = {WAITING}"
        " UNION SELECT e.event_id FROM events AS e JOIN followers AS f"
        " ON e.parent_id = f.event_id"
        f" WHERE e.room_id = :room AND e.due_at IS NULL AND e.status = {WAITING}) "
    )
    params = {"parent": parent_id, "room": room_id}
    # Their messages stay, so their files stay too.
    await conn.execute(
        followers + f"DELETE FROM media WHERE state = {MEDIA_HELD} "
        "AND event_id IN (SELECT event_id FROM followers)", params)
    await conn.execute(
        followers + "DELETE FROM events WHERE room_id = :room "
        "AND event_id IN (SELECT event_id FROM followers)", params)


async def redaction_target(
    conn: Connection, room_id: str, event_id: str
) -> RedactionTarget | None:
    async with conn.execute(
        f"SELECT {DUE_COLUMNS}, status, redaction_id "
        "FROM events WHERE event_id = ? AND room_id = ?",
        (event_id, room_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    due = due_event(row[:10])
    return RedactionTarget(_status(row[10]), row[11], due)


async def forget(conn: Connection, room_id: str, event_id: str) -> None:
    await queue_cancels(conn, "event_id = :event AND room_id = :room",
                        {"event": event_id, "room": room_id})
    await conn.execute(
        "DELETE FROM events WHERE event_id = ? AND room_id = ?", (event_id, room_id)
    )
    # Redacted all the same: its files have no message left to belong to. Due at
    # once (there is no clock here; 0 sorts them first).
    await media.message_gone(conn, event_id, 0)
    await _drop_followers(conn, room_id, event_id)
