"""Benchmark 4: the engine at scale, no homeserver, on SQLite and on PostgreSQL.

By default 1,000,000 tracked events over 10,000 rooms (``make bench``, about a minute
per backend); ``--events 10000000 --rooms 100000`` is a large server's scale (issue 16).
Each backend runs in a process of its own (so peak RSS is its own), PostgreSQL on a
throwaway server from the machine's binaries (bot/devtools/localpostgres.py). Reports:
- ingest rate through Engine.ingest in sync-sized batches (the time inside
  Engine.ingest; building the benchmark's input is left out), against a baseline of a
  plain executemany of the same rows into the same table (the storage floor);
- the cost of finding the next due event at 10k and at the full count (ratio; goal <= 2);
- peak RSS of the process running the engine (goal <= 300 MB);
- restart to ready with every row in place (goal <= 2 s);
and, with both backends, PostgreSQL's figures over SQLite's (goal: within 2 times).

Run: python -m bench.bench_engine_scale [--events N] [--rooms N] [--backend B] [--dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Timer, peak_rss_mb, save, table
from bot.devtools.localpostgres import LocalPostgres, postgres_available
from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import MemberChange, Message, PolicyEvent, RoomUpdate
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.engine.redactor import Outcome, Reply
from bot.engine.store import MIGRATIONS, Database
from bot.engine.store.pgsql import translate

WEEK_MS = 7 * 24 * 3600 * 1000
BOT = "@lethe:bench"
SMALL = 10_000  # rows at which next-due's cost is first measured
GOALS = {"ingest": 50_000, "next_due_ratio": 2.0, "rss_mb": 300, "restart_s": 2.0,
         "pg_over_sqlite": 2.0}
_INSERT = ("INSERT INTO events (event_id, room_id, sender, seq, origin_ts, thread_id, "
           "parent_id, mode, timer_ms, cap_ms, readers_any, read_at, due_at) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class IdleTransport:
    """Nothing comes due during the benchmark; a call would be a bug."""

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        raise AssertionError("nothing should be due")

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        return Reply(Outcome.PRESENT)


def _room(index: int) -> str:
    return f"!room{index:06d}:bench"


def _batches(total: int, rooms: int, per_batch_rooms: int, start_ts: int
             ) -> Iterator[list[RoomUpdate]]:
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


def _baseline_rows(total: int, rooms: int, start_ts: int) -> Iterator[list[tuple[Any, ...]]]:
    per_room = total // rooms
    counter = 0
    for first in range(0, rooms, 100):
        rows = []
        for r in range(first, min(rooms, first + 100)):
            for _ in range(per_room):
                counter += 1
                ts = start_ts + counter
                rows.append((f"$ev{counter:09d}", _room(r), f"@user{r % 50}:bench", counter,
                             ts, None, None, 1, WEEK_MS, None, 0, None, ts + WEEK_MS))
        yield rows


def _baseline_sqlite(path: Path, total: int, rooms: int, start_ts: int) -> float:
    """The storage floor: the same rows, one executemany per batch, plain sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    elapsed = 0.0
    for rows in _baseline_rows(total, rooms, start_ts):
        with Timer() as t:
            conn.execute("BEGIN")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        elapsed += t.seconds
    conn.close()
    path.unlink()
    return total / elapsed


async def _baseline_postgres(url: str, total: int, rooms: int, start_ts: int) -> float:
    """The same floor on PostgreSQL: asyncpg's executemany, one transaction per batch."""
    conn = await asyncpg.connect(url)
    try:
        for statement in MIGRATIONS[0]:
            await conn.execute(translate(statement).sql)
        insert = translate(_INSERT).sql
        elapsed = 0.0
        for rows in _baseline_rows(total, rooms, start_ts):
            with Timer() as t:
                async with conn.transaction():
                    await conn.executemany(insert, rows)
            elapsed += t.seconds
        await conn.execute("DROP TABLE events")
    finally:
        await conn.close()
    return total / elapsed


async def _engine(database: Database) -> Engine:
    engine = await Engine.open(database, IdleTransport(), EngineConfig(BOT))
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


async def _analyze(database: Database) -> None:
    """PostgreSQL: fresh statistics, as autovacuum's ANALYZE gives them within a minute
    or so. Without, the statements the store prepared on the empty table keep the plan
    made then (a scan), and next-due's cost at 10k rows measures that instead."""
    if database.is_sqlite:
        return
    conn = await asyncpg.connect(database.url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _measure(database: Database, total: int, rooms: int, now: int) -> dict[str, Any]:
    engine = await _engine(database)
    await _setup_rooms(engine, rooms, now)
    ingested = 0
    in_ingest = 0.0
    cost_small = None
    with Timer() as wall:
        for updates in _batches(total, rooms, 100, now):
            with Timer() as t:
                await engine.ingest(updates)
            in_ingest += t.seconds
            ingested += sum(len(u.timeline) for u in updates)
            if cost_small is None and ingested >= SMALL:
                await _analyze(database)
                cost_small = await _next_due_cost(engine)
    await _analyze(database)
    cost_large = await _next_due_cost(engine)
    pending = await engine.pending_count()
    await engine.close()
    with Timer() as restart:
        engine = await _engine(database)
        await engine.next_due()
    await engine.close()
    assert cost_small is not None
    return {
        "tracked": pending, "ingest_events_per_s": total / in_ingest,
        "ingest_wall_s": wall.seconds, "next_due_us_small": cost_small,
        "next_due_us_large": cost_large, "next_due_ratio": cost_large / cost_small,
        "peak_rss_mb": peak_rss_mb(), "restart_s": restart.seconds,
    }


async def run_one(backend: str, total: int, rooms: int, workdir: Path) -> dict[str, Any]:
    """One backend, in this process: its baseline, then the engine."""
    now = int(time.time() * 1000)
    if backend == "sqlite":
        base = _baseline_sqlite(workdir / "baseline.db", total, rooms, now)
        result = await _measure(Database.sqlite(workdir / "lethe.db"), total, rooms, now)
        result["database_mb"] = (workdir / "lethe.db").stat().st_size / 2**20
        return {"baseline_events_per_s": base, **result}
    pg = LocalPostgres(workdir / "pg")
    pg.start()
    try:
        base = await _baseline_postgres(pg.create("baseline"), total, rooms, now)
        result = await _measure(Database.postgresql(pg.create("lethe")), total, rooms, now)
        size = pg.psql("SELECT pg_database_size('lethe')")
        result["database_mb"] = int(size) / 2**20
    finally:
        pg.stop()
    return {"baseline_events_per_s": base, **result}


def _child(backend: str, total: int, rooms: int, parent: Path) -> dict[str, Any]:
    """Run one backend in a fresh process, its files under ``parent`` (deleted after)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lethe-bench-{backend}-", dir=parent))
    os.chmod(workdir, 0o755)  # the PostgreSQL server may run as another account
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_engine_scale", "--child", backend,
             "--events", str(total), "--rooms", str(rooms), "--dir", str(workdir)],
            check=True, stdout=subprocess.PIPE, text=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def report(total: int, rooms: int, results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, r in results.items():
        rows += [
            [name, "ingest (events/s)", f"{r['baseline_events_per_s']:,.0f} (executemany)",
             f"{r['ingest_events_per_s']:,.0f}", f">= {GOALS['ingest']:,}",
             _ok(r["ingest_events_per_s"] >= GOALS["ingest"])],
            [name, "next due (us/call)", f"{r['next_due_us_small']:.1f} at 10k rows",
             f"{r['next_due_us_large']:.1f} ({r['next_due_ratio']:.2f}x)", "<= 2x",
             _ok(r["next_due_ratio"] <= GOALS["next_due_ratio"])],
            [name, "peak RSS (MB)", "", f"{r['peak_rss_mb']:.0f}", f"<= {GOALS['rss_mb']}",
             _ok(r["peak_rss_mb"] <= GOALS["rss_mb"])],
            [name, "restart to ready (s)", "", f"{r['restart_s']:.2f}",
             f"<= {GOALS['restart_s']}", _ok(r["restart_s"] <= GOALS["restart_s"])],
        ]
    text = table(f"Engine scale: {total:,} events over {rooms:,} rooms",
                 ["backend", "measure", "baseline", "Lethe", "goal", ""], rows)
    if "sqlite" in results and "postgresql" in results:
        text += "\n\n" + table("PostgreSQL over SQLite (goal: within 2x on each)",
                               ["measure", "ratio", ""], pg_ratios(results))
    return text


def pg_ratios(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """PostgreSQL's figure over SQLite's, each the way that makes > 1 the worse."""
    lite, pg = results["sqlite"], results["postgresql"]
    rows = []
    for key, label, slower in (
        ("ingest_events_per_s", "ingest (SQLite rate / PG rate)", lambda a, b: a / b),
        ("next_due_us_large", "next due at full count", lambda a, b: b / a),
        ("peak_rss_mb", "peak RSS", lambda a, b: b / a),
        ("restart_s", "restart to ready", lambda a, b: b / a),
    ):
        ratio = slower(lite[key], pg[key])
        rows.append([label, f"{ratio:.2f}", _ok(ratio <= GOALS["pg_over_sqlite"])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the databases go (10 M events: a few GB each); as root, "
                        "the postgres account must be able to reach it")
    parser.add_argument("--child", choices=("sqlite", "postgresql"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(run_one(args.child, args.events, args.rooms, args.dir))
        print(json.dumps(result))
        return
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    if args.backend == "both" and not postgres_available():
        print("PostgreSQL's server binaries are not installed: SQLite only", flush=True)
        backends = ("sqlite",)
    results = {}
    for backend in backends:
        with Timer() as took:
            results[backend] = _child(backend, args.events, args.rooms, args.dir)
        results[backend]["run_s"] = took.seconds
        print(f"{backend} ({took.seconds:.0f} s): {json.dumps(results[backend])}", flush=True)
    print(report(args.events, args.rooms, results))
    name = "engine_scale" if args.events == 1_000_000 else \
        f"engine_scale_{args.events // 1_000_000}m"
    data: dict[str, Any] = {"events": args.events, "rooms": args.rooms, "goals": GOALS,
                            **results}
    if len(results) == 2:
        data["pg_over_sqlite"] = {row[0]: float(row[1]) for row in pg_ratios(results)}
    print(f"\nwrote {save(name, data)}")


if __name__ == "__main__":
    main()
