"""Benchmark 4: the engine at scale, no homeserver.

1,000,000 tracked events over 10,000 rooms in a real SQLite file. Reports:
- ingest rate through Engine.ingest in sync-sized batches, against a baseline of
  plain sqlite3 executemany of the same rows into the same table (the ratio is
  Lethe's overhead over the storage floor);
- the cost of finding the next due event at 10k and at 1M rows (ratio; goal <= 2);
- peak RSS (goal <= 300 MB);
- restart-to-ready time with 1M rows (goal <= 10 s).

Run: python -m bench.bench_engine_scale [--events N] [--rooms N]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import Timer, peak_rss_mb, save, table
from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import MemberChange, Message, PolicyEvent, RoomUpdate
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.engine.redactor import Outcome, Reply
from bot.engine.store import MIGRATIONS

WEEK_MS = 7 * 24 * 3600 * 1000
BOT = "@lethe:bench"


class IdleTransport:
    """Nothing comes due during the benchmark; a call would be a bug."""

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        raise AssertionError("nothing should be due")

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        return Reply(Outcome.PRESENT)


def _room(index: int) -> str:
    return f"!room{index:06d}:bench"


def _batches(total: int, rooms: int, per_batch_rooms: int, start_ts: int):
    per_room = total // rooms
    counter = 0
    for first in range(0, rooms, per_batch_rooms):
        updates = []
        for r in range(first, min(rooms, first + per_batch_rooms)):
            items = []
            for _ in range(per_room):
                counter += 1
                items.append(Message(f"$ev{counter:09d}", f"@user{r % 50}:bench",
                                     start_ts + counter))
            updates.append(RoomUpdate(_room(r), tuple(items), (), items[-1].event_id))
        yield updates


async def _engine(path: Path) -> Engine:
    engine = await Engine.open(path, IdleTransport(), EngineConfig(BOT))
    await engine.start()
    return engine


async def _setup_rooms(engine: Engine, rooms: int, now: int) -> None:
    policy = Policy.after_send(WEEK_MS).to_state()
    for first in range(0, rooms, 1000):
        await engine.ingest([
            RoomUpdate(_room(r), (
                MemberChange("@reader:bench", True, f"$m{r}"),
                PolicyEvent(POLICY_EVENT_TYPE, "@admin:bench", now, policy, True, f"$p{r}"),
            ))
            for r in range(first, min(rooms, first + 1000))
        ])


async def _next_due_cost(engine: Engine, calls: int = 2000) -> float:
    with Timer() as t:
        for _ in range(calls):
            await engine.next_due()
    return t.seconds / calls * 1e6  # microseconds per call


def _baseline_insert(path: Path, total: int, rooms: int, start_ts: int) -> float:
    """The storage floor: the same rows, one executemany per batch, plain sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    per_room = total // rooms
    counter = 0
    with Timer() as t:
        for first in range(0, rooms, 100):
            rows = []
            for r in range(first, min(rooms, first + 100)):
                for _ in range(per_room):
                    counter += 1
                    ts = start_ts + counter
                    rows.append((f"$ev{counter:09d}", _room(r), f"@user{r % 50}:bench", counter,
                                 ts, None, None, 1, WEEK_MS, None, 0, None, ts + WEEK_MS))
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, thread_id, "
                "parent_id, mode, timer_ms, cap_ms, readers_any, read_at, due_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    conn.close()
    return total / t.seconds


async def main(total: int, rooms: int) -> dict[str, object]:
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        base_rate = _baseline_insert(Path(tmp) / "baseline.db", total, rooms, now)

        path = Path(tmp) / "lethe.db"
        engine = await _engine(path)
        await _setup_rooms(engine, rooms, now)
        small_total = 10_000
        ingested = 0
        cost_small = None
        with Timer() as t:
            for updates in _batches(total, rooms, 100, now):
                await engine.ingest(updates)
                ingested += sum(len(u.timeline) for u in updates)
                if cost_small is None and ingested >= small_total:
                    t_pause = time.perf_counter()
                    cost_small = await _next_due_cost(engine)
                    t.start += time.perf_counter() - t_pause  # not part of the ingest
        lethe_rate = total / t.seconds
        cost_large = await _next_due_cost(engine)
        pending = await engine.pending_count()
        await engine.close()

        with Timer() as restart:
            engine = await _engine(path)
            await engine.next_due()
        await engine.close()

    assert cost_small is not None
    rss = peak_rss_mb()
    rows = [
        ["ingest (events/s)", f"{base_rate:,.0f} (plain executemany)", f"{lethe_rate:,.0f}",
         f"{lethe_rate / base_rate:.2f}", ">= 20,000 events/s",
         "ok" if lethe_rate >= 20_000 else "MISSED"],
        ["next due (us/call)", f"{cost_small:.1f} at 10k rows", f"{cost_large:.1f} at "
         f"{total // 1000}k rows", f"{cost_large / cost_small:.2f}", "ratio <= 2",
         "ok" if cost_large / cost_small <= 2 else "MISSED"],
        ["peak RSS (MB)", "", f"{rss:.0f}", "", "<= 300", "ok" if rss <= 300 else "MISSED"],
        ["restart to ready (s)", "", f"{restart.seconds:.2f}", "", "<= 10",
         "ok" if restart.seconds <= 10 else "MISSED"],
    ]
    print(table(f"Engine scale: {total:,} events over {rooms:,} rooms ({pending:,} tracked)",
                ["measure", "baseline", "Lethe", "ratio", "goal", ""], rows))
    return {
        "events": total, "rooms": rooms, "tracked": pending,
        "ingest_events_per_s": lethe_rate, "baseline_events_per_s": base_rate,
        "ingest_ratio": lethe_rate / base_rate,
        "next_due_us_small": cost_small, "next_due_us_large": cost_large,
        "next_due_ratio": cost_large / cost_small,
        "peak_rss_mb": rss, "restart_s": restart.seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=10_000)
    args = parser.parse_args()
    result = asyncio.run(main(args.events, args.rooms))
    print(f"\nwrote {save('engine_scale', result)}")
