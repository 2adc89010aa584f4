"""Delayed redactions (bot/engine/delayed.py says what they are): which events to
schedule with the homeserver, each step of scheduling one, and the durable queue of
those to cancel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.engine.model import ArmCandidate, CancelJob, Delay, DelayRef, DelayState
from bot.engine.store.conn import Connection
from bot.engine.store.sql import (
    DELAY_ARMED,
    DELAY_ARMING,
    DELAY_NEVER,
    DELAY_NONE,
    DELAYED,
    STALE,
    UNARMED,
    WAITING,
)

_CANDIDATE = "e.event_id, e.room_id, e.sender, e.due_at, e.delay_id, e.delay_by, e.delay_at"


def _candidate(row: Any) -> ArmCandidate:
    delay = None if row[4] is None else Delay(DelayState.ARMED, row[4], row[5], row[6])
    return ArmCandidate(row[0], row[1], row[2], int(row[3]), delay)


async def arm_candidates(conn: Connection, low: int, high: int | None,
                         limit: int) -> list[ArmCandidate]:
    """Events with no delayed redaction, due from ``low`` to ``high``, earliest first,
    in rooms where Lethe may redact everybody's messages (elsewhere it would fail)."""
    async with conn.execute(
        f"SELECT {_CANDIDATE} FROM events AS e INDEXED BY events_unarmed "
        "JOIN rooms AS r ON r.room_id = e.room_id "
        f"WHERE {UNARMED} AND e.due_at >= ? AND e.due_at <= ? AND r.can_redact = 1 "
        "ORDER BY e.due_at LIMIT ?",
        (low, high if high is not None else 2**62, limit),
    ) as cur:
        return [_candidate(row) for row in await cur.fetchall()]


async def stale(conn: Connection, low: int, limit: int) -> list[ArmCandidate]:
    """Waiting events due from ``low`` on whose deadline moved before the delayed
    redaction scheduled for them: it is to be replaced."""
    async with conn.execute(
        f"SELECT {_CANDIDATE} FROM events AS e INDEXED BY events_stale "
        f"WHERE {STALE} AND e.status = {WAITING} AND e.due_at >= ? ORDER BY e.due_at LIMIT ?",
        (low, limit),
    ) as cur:
        return [_candidate(row) for row in await cur.fetchall()]


async def next_unarmed(conn: Connection, low: int) -> int | None:
    """The earliest due time from ``low`` on of an event with no delayed redaction."""
    async with conn.execute(
        f"SELECT min(due_at) FROM events INDEXED BY events_unarmed WHERE {UNARMED} "
        "AND due_at >= ?", (low,),
    ) as cur:
        row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def begin_arm(conn: Connection, event_id: str, txn_id: str, by: str,
                    at: int) -> bool:
    cur = await conn.execute(
        f"UPDATE events SET delay_state = {DELAY_ARMING}, delay_txn = ?, delay_by = ?, "
        f"delay_at = ?, delay_id = NULL WHERE event_id = ? AND delay_state = {DELAY_NONE} "
        f"AND status = {WAITING}",
        (txn_id, by, at, event_id),
    )
    return cur.rowcount > 0


async def armed(conn: Connection, event_id: str, txn_id: str, delay_id: str,
                grace_ms: int) -> bool:
    cur = await conn.execute(
        f"UPDATE events SET delay_state = {DELAY_ARMED}, delay_id = ?, "
        "due_at = CASE WHEN due_at >= delay_at THEN delay_at + ? ELSE due_at END "
        f"WHERE event_id = ? AND delay_state = {DELAY_ARMING} AND delay_txn = ?",
        (delay_id, grace_ms, event_id, txn_id),
    )
    return cur.rowcount > 0


async def adopt(conn: Connection, event_id: str, delay_id: str, by: str, at: int,
                grace_ms: int) -> bool:
    """A delayed redaction found in ``by``'s list for an event scheduling one (ARMING),
    or (the database was lost) with none: it is the event's."""
    cur = await conn.execute(
        f"UPDATE events SET delay_state = {DELAY_ARMED}, delay_id = ?, delay_by = ?, "
        "delay_at = ?, due_at = CASE WHEN due_at >= ? THEN ? + ? ELSE due_at END "
        f"WHERE event_id = ? AND (delay_state = {DELAY_ARMING} AND delay_by = ? "
        f"OR delay_state = {DELAY_NONE} AND status = {WAITING} AND due_at + 1000 >= ?)",
        (delay_id, by, at, at, at, grace_ms, event_id, by, at),
    )
    return cur.rowcount > 0


async def disarm(conn: Connection, event_id: str, *, never: bool,
                 delay_id: str | None = None) -> bool:
    """The delayed redaction is no more (cancelled, refused, or never made): NEVER when
    Lethe redacts the event itself from now on, else it may get another. With
    ``delay_id``, only if that is still the event's."""
    state = DELAY_NEVER if never else DELAY_NONE
    match = "" if delay_id is None else " AND delay_id = :delay"
    cur = await conn.execute(
        f"UPDATE events SET delay_state = {state}, delay_txn = NULL, delay_id = NULL, "
        f"delay_by = NULL, delay_at = NULL WHERE event_id = :event AND {DELAYED}{match}",
        {"event": event_id, "delay": delay_id},
    )
    return cur.rowcount > 0


async def leave_to_lethe(conn: Connection, event_id: str) -> None:
    await conn.execute(
        f"UPDATE events SET delay_state = {DELAY_NEVER} WHERE event_id = ? "
        f"AND delay_state = {DELAY_NONE}", (event_id,))


async def arming(conn: Connection) -> list[ArmCandidate]:
    """Events whose scheduling request may or may not have reached the homeserver."""
    async with conn.execute(
        f"SELECT e.event_id, e.room_id, e.sender, e.due_at, e.delay_txn, e.delay_by, "
        f"e.delay_at FROM events AS e WHERE e.delay_state = {DELAY_ARMING}"
    ) as cur:
        return [ArmCandidate(r[0], r[1], r[2], int(r[3]),
                             Delay(DelayState.ARMING, r[4], r[5], r[6]))
                for r in await cur.fetchall()]


async def delays_of(conn: Connection, event_ids: Iterable[str]) -> dict[str, Delay]:
    """The delayed-redaction state of each of ``event_ids`` Lethe tracks."""
    ids = list(event_ids)
    found: dict[str, Delay] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        async with conn.execute(
            "SELECT event_id, delay_state, delay_id, delay_by, delay_at FROM events "
            f"WHERE event_id IN ({','.join('?' * len(chunk))})", chunk,
        ) as cur:
            for row in await cur.fetchall():
                try:
                    state = DelayState(int(row[1]))
                except ValueError:
                    state = DelayState.NEVER
                found[row[0]] = Delay(state, row[2], row[3], row[4])
    return found


async def armed_count(conn: Connection, by: str | None = None,
                      room_id: str | None = None) -> int:
    sql = f"SELECT count(*) FROM events WHERE {DELAYED}"
    args: list[Any] = []
    if by is not None:
        sql += " AND delay_by = ?"
        args.append(by)
    if room_id is not None:
        sql += " AND room_id = ?"
        args.append(room_id)
    async with conn.execute(sql, args) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def latest_armed(conn: Connection, by: str) -> ArmCandidate | None:
    """``by``'s delayed redaction that fires last."""
    async with conn.execute(
        f"SELECT {_CANDIDATE} FROM events AS e INDEXED BY events_delayed "
        f"WHERE e.delay_by = ? AND {DELAYED} AND e.delay_state = {DELAY_ARMED} "
        f"AND e.status = {WAITING} "
        "ORDER BY e.delay_at DESC LIMIT 1", (by,),
    ) as cur:
        row = await cur.fetchone()
    return None if row is None else _candidate(row)


async def fire_seconds(conn: Connection, low: int) -> dict[int, int]:
    """How many delayed redactions fire in each second (ms // 1000) from ``low`` on."""
    async with conn.execute(
        f"SELECT delay_at / 1000, count(*) FROM events WHERE {DELAYED} AND delay_at >= ? "
        "GROUP BY 1", (low,),
    ) as cur:
        return {int(second): int(count) for second, count in await cur.fetchall()}


# --- the queue of delayed redactions to cancel ---------------------------------------


async def queue_cancel(conn: Connection, job: DelayRef) -> None:
    await conn.execute(
        "INSERT INTO delay_cancels (delay_id, user_id, room_id, target) VALUES (?, ?, ?, ?)",
        (job.delay_id, job.user_id, job.room_id, job.target),
    )


async def due_cancels(conn: Connection, now_ms: int, limit: int) -> list[CancelJob]:
    async with conn.execute(
        "SELECT id, delay_id, user_id, room_id, target, tries FROM delay_cancels "
        "WHERE not_before <= ? ORDER BY id LIMIT ?", (now_ms, limit),
    ) as cur:
        return [CancelJob(r[0], DelayRef(r[1], r[2], r[3], r[4]), r[5])
                for r in await cur.fetchall()]


async def cancel_done(conn: Connection, job_id: int) -> None:
    await conn.execute("DELETE FROM delay_cancels WHERE id = ?", (job_id,))


async def cancel_later(conn: Connection, job_id: int, not_before: int) -> None:
    await conn.execute(
        "UPDATE delay_cancels SET not_before = ?, tries = tries + 1 WHERE id = ?",
        (not_before, job_id),
    )


async def cancels(conn: Connection) -> tuple[int, int | None]:
    """How many cancellations are queued, and when the next may be tried."""
    async with conn.execute("SELECT count(*), min(not_before) FROM delay_cancels") as cur:
        row = await cur.fetchone()
    if row is None:
        return 0, None
    return int(row[0]), None if row[1] is None else int(row[1])
