"""Benchmark 6: a receipt batch in a big after_read room, no homeserver.

A room of 2,000 members (one sender, 1,999 required readers) with 2,000 unread
after_read messages. Each case times one ``Engine.ingest`` of a receipt batch,
which holds the store's write lock for its whole length (every room's ingestion and
redaction waits meanwhile):

- last reader: 1,998 readers have read everything; the last one's receipt makes all
  2,000 messages read (the worst case when a cost grows with members x events);
- first reader: nobody has read; one receipt covers all 2,000;
- one new message: everybody read up to the previous message; one receipt covers
  the newest (the steady state of a busy room);
- catch-up: every reader's receipt in one batch (after downtime).

The baseline is the same batch in a 2-member room with one unread message, measured
in the same process. Goal: a one-receipt batch in the big room under 50 ms.

Run: python -m bench.bench_receipts [--members N] [--events N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import Timer, save, table
from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import MemberChange, Message, PolicyEvent, Receipt, RoomUpdate
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.engine.redactor import Outcome, Reply
from bot.engine.store import Store

HOUR_MS = 3600 * 1000
BOT = "@lethe:bench"
ROOM = "!big:bench"
GOAL_MS = 50.0


class IdleTransport:
    """Nothing comes due during the benchmark (timer 1 h, cap 1 week)."""

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        raise AssertionError("nothing should be due")

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        return Reply(Outcome.PRESENT)


def _member(i: int) -> str:
    return f"@m{i:05d}:bench"


async def _engine(path: Path) -> Engine:
    engine = await Engine.open(path, IdleTransport(), EngineConfig(BOT))
    await engine.start()
    return engine


async def _build(path: Path, members: int, events: int) -> None:
    """The room: members join, the policy, then ``events`` messages from member 0."""
    engine = await _engine(path)
    now = int(time.time() * 1000)
    joins = tuple(MemberChange(_member(i), True, f"$join{i}") for i in range(members))
    policy = Policy.after_read(HOUR_MS, 168 * HOUR_MS).to_state()
    await engine.ingest([RoomUpdate(ROOM, (
        *joins, PolicyEvent(POLICY_EVENT_TYPE, _member(0), now, policy, True, "$policy")))])
    for first in range(0, events, 500):
        await engine.ingest([RoomUpdate(ROOM, tuple(
            Message(f"$ev{i:06d}", _member(0), now + i)
            for i in range(first, min(events, first + 500))))])
    await engine.close()


async def _read_by(path: Path, readers: range, up_to: str) -> None:
    """Receipts of ``readers`` on ``up_to``, written straight into the table (building
    them receipt by receipt would take hours with a cost of members x events); messages
    every required reader has read are marked read, and whatever per-message count the
    engine keeps is recomputed (``recount_readers_left``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    seq = conn.execute("SELECT seq FROM positions WHERE event_id = ?", (up_to,)).fetchone()[0]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR REPLACE INTO receipts (room_id, user_id, thread, seq) VALUES (?, ?, '', ?)",
        [(ROOM, _member(i), seq) for i in readers])
    conn.execute(
        "UPDATE events AS e SET read_at = origin_ts WHERE mode = 2 AND read_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM members m WHERE m.room_id = e.room_id "
        "AND m.join_seq < e.seq AND m.user_id != e.sender AND NOT EXISTS ("
        "SELECT 1 FROM receipts r WHERE r.room_id = m.room_id AND r.user_id = m.user_id "
        "AND r.seq >= e.seq))")
    conn.execute("COMMIT")
    conn.close()
    store = await Store.open(path)
    async with store.transaction() as tx:
        await tx.recount_readers_left(ROOM)
    await store.close()


async def _time_batch(path: Path, receipts: tuple[Receipt, ...]) -> tuple[float, int]:
    """Milliseconds for one ingest of ``receipts``; and how many messages are read after."""
    engine = await _engine(path)
    with Timer() as t:
        await engine.ingest([RoomUpdate(ROOM, receipts=receipts)])
    await engine.close()
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE read_at IS NOT NULL").fetchone()
    conn.close()
    return t.seconds * 1000, int(row[0]) if row else 0


async def _case(tmp: Path, name: str, template: Path,
                prepare: Callable[[Path], Awaitable[None] | None],
                receipts: tuple[Receipt, ...], repeat: int) -> tuple[float, int]:
    times = []
    read = 0
    for n in range(repeat):
        path = tmp / f"{name}{n}.db"
        shutil.copy(template, path)
        pending = prepare(path)
        if pending is not None:
            await pending
        ms, read = await _time_batch(path, receipts)
        times.append(ms)
        path.unlink()
    return statistics.median(times), read


async def main(members: int, events: int, repeat: int) -> dict[str, object]:
    last = f"$ev{events - 1:06d}"
    with tempfile.TemporaryDirectory(prefix="lethe-bench-receipts-") as tmp_name:
        tmp = Path(tmp_name)
        small, big = tmp / "small.db", tmp / "big.db"
        await _build(small, 2, 1)
        await _build(big, members, events)
        await _build(tmp / "big_plus.db", members, events + 1)

        baseline, _ = await _case(tmp, "baseline", small, lambda p: None,
                                  (Receipt(_member(1), "$ev000000"),), repeat)
        cases = [
            ("last reader", big, lambda p: _read_by(p, range(1, members - 1), last),
             (Receipt(_member(members - 1), last),)),
            ("first reader", big, lambda p: None, (Receipt(_member(1), last),)),
            ("one new message", tmp / "big_plus.db",
             lambda p: _read_by(p, range(1, members), last),
             (Receipt(_member(1), f"$ev{events:06d}"),)),
            ("catch-up (every reader)", big, lambda p: None,
             tuple(Receipt(_member(i), last) for i in range(1, members))),
        ]
        results = []
        for name, template, prepare, receipts in cases:
            ms, read = await _case(tmp, name.split()[0], template, prepare, receipts, repeat)
            results.append((name, len(receipts), ms, read))

    rows = [["baseline: 2 members, 1 unread", 1, baseline, "", "", ""]]
    for name, count, ms, read in results:
        goal = f"< {GOAL_MS:.0f} ms" if count == 1 else ""
        verdict = ("ok" if ms < GOAL_MS else "MISSED") if count == 1 else ""
        rows.append([name, count, ms, f"{ms / baseline:.0f}x", goal, verdict])
        rows[-1].insert(3, read)
    rows[0].insert(3, "")
    print(table(f"Receipt batch in a {members:,}-member room with {events:,} unread messages "
                f"(median of {repeat})",
                ["case", "receipts", "ms", "read after", "vs baseline", "goal", ""], rows))
    return {
        "members": members, "events": events, "repeat": repeat, "baseline_ms": baseline,
        "cases": [{"case": name, "receipts": count, "ms": ms, "read_after": read,
                   "ratio": ms / baseline} for name, count, ms, read in results],
        "goal_ms": GOAL_MS,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main(args.members, args.events, args.repeat))
    print(f"\nwrote {save('receipts', result)}")
