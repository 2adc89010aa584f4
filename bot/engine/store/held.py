"""Held events: the bot's pinned policy notices, exempt from expiry while pinned.

A held event is out of the ``events`` table (nothing can claim or arm it), and its
rule waits here: the columns it had there, or (``mode`` NULL) nothing yet, when the
hold came before the sync that brings the event (its echo fills them in). Releasing
it puts it back on the schedule under that rule (bot/engine/holds.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.engine.held import HeldEvent
from bot.engine.model import TrackedEvent
from bot.engine.policy import Mode, Policy, Readers
from bot.engine.store.conn import Connection
from bot.engine.store.events import queue_cancels
from bot.engine.store.sql import MODE_CODE, WAITING

_MODES = {code: mode for mode, code in MODE_CODE.items()}

_RULE = "sender, seq, origin_ts, sent_at, thread_id, mode, timer_ms, cap_ms, readers_any"


async def hold(conn: Connection, room_id: str, event_id: str) -> bool:
    """Take the event off the schedule, keeping its rule; or, not tracked yet, wait for
    it. False if it is on its way out already (claimed, sent, parked or failed)."""
    cur = await conn.execute(
        f"INSERT INTO held (event_id, room_id, {_RULE}) SELECT event_id, room_id, {_RULE} "
        f"FROM events WHERE event_id = ? AND room_id = ? AND status = {WAITING} "
        "ON CONFLICT DO NOTHING", (event_id, room_id))
    if cur.rowcount:
        await queue_cancels(conn, "event_id = :event", {"event": event_id})
        await conn.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
        return True
    async with conn.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)) as found:
        if await found.fetchone() is not None:
            return False
    await conn.execute("INSERT INTO held (event_id, room_id) VALUES (?, ?) "
                       "ON CONFLICT DO NOTHING", (event_id, room_id))
    return True


async def fill(conn: Connection, event_id: str, row: TrackedEvent | None) -> None:
    """The held event's echo: the row it would have been tracked as, or None (the
    room's policy was off then: releasing it tracks nothing)."""
    values: tuple[Any, ...] = (None, None, None, None, None, MODE_CODE[Mode.OFF], None,
                               None, 0)
    if row is not None:
        values = (row.sender, row.seq, row.origin_ts,
                  row.origin_ts if row.sent_at is None else row.sent_at, row.thread_id,
                  MODE_CODE[row.policy.mode], row.policy.timer_ms, row.policy.cap_ms,
                  int(row.policy.readers is Readers.ANY))
    await conn.execute(
        "UPDATE held SET sender = ?, seq = ?, origin_ts = ?, sent_at = ?, thread_id = ?, "
        "mode = ?, timer_ms = ?, cap_ms = ?, readers_any = ? WHERE event_id = ? "
        "AND mode IS NULL", (*values, event_id))


async def take(conn: Connection, room_id: str, event_id: str) -> HeldEvent | None:
    """Remove the hold; what it held, or None if nothing was."""
    async with conn.execute(
        f"SELECT event_id, room_id, {_RULE} FROM held WHERE event_id = ? AND room_id = ?",
        (event_id, room_id),
    ) as cur:
        found = await cur.fetchone()
    if found is None:
        return None
    await conn.execute("DELETE FROM held WHERE event_id = ?", (event_id,))
    return _held(found)


async def held(conn: Connection, room_id: str | None) -> list[HeldEvent]:
    where, args = ("WHERE room_id = ?", (room_id,)) if room_id is not None else ("", ())
    async with conn.execute(
        f"SELECT event_id, room_id, {_RULE} FROM held {where} ORDER BY rowid", args,
    ) as cur:
        return [_held(row) for row in await cur.fetchall()]


def _held(row: Sequence[Any]) -> HeldEvent:
    event_id, room_id, sender, seq, origin_ts, sent_at, thread_id = row[:7]
    mode, timer_ms, cap_ms, readers_any = row[7:]
    rule = None
    if mode is not None:
        try:
            rule = Policy(_MODES[int(mode)], timer_ms, cap_ms,
                          Readers.ANY if readers_any else Readers.ALL)
        except (KeyError, ValueError):  # a newer version's: kept, never put back
            rule = Policy.off()
    return HeldEvent(event_id, room_id, sender, seq, origin_ts, sent_at, thread_id, rule)
