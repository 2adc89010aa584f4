"""Benchmark 2: deletion lag under steady load.

A local Synapse (rate limits raised). First the homeserver's redaction limit R is
measured with benchmark 1's baseline client (C = Lethe's workers). Then the real
LetheBot runs in an encrypted room under after_send 2s, and a sender posts
Megolm-encrypted messages at 25%, 50% and 80% of R for ~15 s each, open-loop
(each message starts on schedule, whatever the homeserver's latency). Lag is
verified - due for each message, as the bot's scheduler reports it.

The same load is then put on a second encrypted room without the bot, where a
minimal client (benchmark 1's, C = Lethe's workers) redacts each message 2 s
after its sender started sending it: no sync, no tracking, no verification. Its
lag (redaction answered - (origin_server_ts + 2 s)) shows what the homeserver
itself allows at that load. At each level the two alternate in blocks (Lethe
first), so that both see the same machine.

Run: python -m bench.bench_lag [--seconds 15] [--levels 0.25 0.5 0.8]
     [--synapse-db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.bench_throughput import WORKERS, baseline_rate, baseline_session, redact_once
from bench.common import (
    RedactionLog,
    Timer,
    bot_room,
    join,
    local_synapse,
    quiet_logging,
    save,
    send_encrypted,
    set_policy,
    spread,
    table,
)
from bench.synapsedb import add_synapse_db_option
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person
from bot.devtools.synapseusers import RegisteredUser
from bot.engine.policy import Policy
from bot.matrix.api import CLIENT_V3, MatrixHttp, q

TIMER_MS = 2000
BASELINE_EVENTS = 400
BLOCKS = 3  # per level and side


async def baseline_lag(hs: LocalSynapse, sender: Person, mod: RegisteredUser, room_id: str,
                       count: int, rate: float, timeout: float) -> list[float]:
    """The minimal client's lag, in seconds, for ``count`` messages sent at ``rate``."""
    queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    answered: dict[str, float] = {}
    nonce = secrets.token_hex(4)

    async def worker(session: object) -> None:
        while True:
            event_id, started = await queue.get()
            await asyncio.sleep(max(0.0, started + TIMER_MS / 1000 - time.time()))
            await redact_once(session, hs.base_url, room_id, event_id,  # type: ignore[arg-type]
                              f"lag{nonce}.{len(answered)}.{secrets.token_hex(2)}")
            answered[event_id] = time.time()
            queue.task_done()

    async with baseline_session(mod.access_token) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(WORKERS)]
        try:
            ids = await send_encrypted(sender, room_id, count, rate=rate,
                                       on_sent=lambda e, t: queue.put_nowait((e, t)))
            await asyncio.wait_for(queue.join(), timeout)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    # Against the true due time, read once the load is over.
    http = MatrixHttp(hs.base_url, mod.access_token)
    try:
        lags = []
        for event_id in ids:
            reply = await http.request(
                "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/event/{q(event_id)}")
            due = int(reply.body["origin_server_ts"]) / 1000 + TIMER_MS / 1000
            lags.append(answered[event_id] - due)
    finally:
        await http.close()
    return lags


async def main(seconds: float, levels: Sequence[float],
               synapse_db: str = "sqlite") -> dict[str, object]:
    quiet_logging()
    results = []
    with local_synapse(synapse_db=synapse_db) as hs, \
            tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        print(f"measuring the baseline redaction rate ({BASELINE_EVENTS} events, C={WORKERS})",
              flush=True)
        limit = await baseline_rate(hs, BASELINE_EVENTS)
        print(f"  baseline: {limit:.1f} redactions/s", flush=True)
        room = await bot_room(hs, Path(tmp), ["alice"])
        try:
            sender = room.people[0]
            mod = hs.register(f"mod{secrets.token_hex(3)}")
            plain_room = await sender.create_room([mod.user_id], power={mod.user_id: 100})
            mod_http = MatrixHttp(hs.base_url, mod.access_token)
            await join(mod_http, plain_room)
            await mod_http.close()
            verified = RedactionLog().attach(room.engine)
            await set_policy(room, Policy.after_send(TIMER_MS))
            for level in levels:
                rate = level * limit
                count = max(1, round(rate * seconds / BLOCKS))
                timeout = seconds * 10 + 60
                lethe_lags: list[float] = []
                base_lags: list[float] = []
                sent, send_s = 0, 0.0
                for _ in range(BLOCKS):
                    with Timer() as sending:
                        ids = await send_encrypted(sender, room.room_id, count, rate=rate)
                    sent, send_s = sent + len(ids), send_s + sending.seconds
                    done = await verified.wait_for(ids, timeout)
                    lethe_lags += [d.lag_ms / 1000 for d in done]
                    base_lags += await baseline_lag(hs, sender, mod, plain_room, count, rate,
                                                    timeout)
                lethe, base = spread(lethe_lags), spread(base_lags)
                results.append({"load": level, "target_per_s": rate, "sent": sent,
                                "sent_per_s": sent / send_s, **lethe,
                                **{f"baseline_{k}": v for k, v in base.items()}})
                print(f"  {level:.0%}: {sent} messages at {sent / send_s:.1f}/s; p99 lag "
                      f"Lethe {lethe['p99_s']:.2f} s, minimal client {base['p99_s']:.2f} s",
                      flush=True)
            verified.detach()
        finally:
            await room.close()
    rows = [[f"{r['load']:.0%}", r["target_per_s"], r["sent_per_s"], r["sent"], r["p50_s"],
             r["p99_s"], r["max_s"], r["baseline_p50_s"], r["baseline_p99_s"],
             r["baseline_max_s"], "ok" if r["p99_s"] <= 1 else "MISSED"]
            for r in results]
    print()
    print(table(f"Deletion lag (due -> verified, s) under after_send {TIMER_MS // 1000}s, "
                f"encrypted room, Synapse on {synapse_db}; load = share of the baseline limit "
                f"{limit:.1f} redactions/s "
                "measured in this run; goal: Lethe p99 <= 1 s up to 80%",
                ["load", "target msg/s", "sent msg/s", "messages", "Lethe p50", "Lethe p99",
                 "Lethe max", "minimal p50", "minimal p99", "minimal max", ""], rows))
    return {"baseline_per_s": limit, "timer_ms": TIMER_MS, "seconds_per_level": seconds,
            "encrypted": True, "levels": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 0.8])
    add_synapse_db_option(parser)
    args = parser.parse_args()
    result = asyncio.run(main(args.seconds, args.levels, args.synapse_db))
    print(f"\nwrote {save('lag', result, args.synapse_db)}")
