"""Benchmark 7: delayed redactions (the homeserver redacts at the deadline by itself).

A local Synapse offering delayed events (MSC4140) and redactions through /send
(MSC4169), rate limits raised. The real LetheBot in an encrypted room, once with
``redaction.delayed: off`` (the baseline: Lethe alone redacts) and once with it on,
in the same run:

a. Requests per message: every request the bot's own HTTP client sends for N
   messages from their arrival until all are confirmed (scheduling, cancelling,
   listing, redacting, fetching; the sync is nio's and the same either way), under
   after_send, and under after_read with each message read at once (its delayed
   redaction for the cap is then replaced).
b. Lag with the bot stopped: N messages under after_send T; once they are scheduled
   the bot stops, before any is due. Lag = when another member's client sees each
   redaction arrive, minus its deadline (a delayed event's origin_server_ts is its
   scheduled time, so only a client's view says when it came). Against the bot
   running with delayed redactions off, redacting itself, measured the same way.
   Then the bot is started again: it must count each once and send nothing.
c. At the due time: a burst of messages sent as fast as they go, all due within a
   second or two; lag as in (b) and the rate at which they are seen redacted, with
   delayed redactions on (the homeserver sends at most 20 a second of them, Lethe the
   rest) and off.

Run: python -m bench.bench_delayed [--messages 50] [--burst 200] [--timer 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import (
    BotRoom,
    RedactionLog,
    bot_room,
    local_synapse,
    quiet_logging,
    save,
    send_encrypted,
    set_policy,
    spread,
    table,
)
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person, eventually
from bot.devtools.synapseconfig import delayed_redactions
from bot.engine.policy import Policy
from bot.matrix.api import CLIENT_V3, MatrixHttp

RATE = 10.0  # messages a second for (a) and (b): within the homeserver's fire budget


class Seen:
    """When another member's client saw each redaction arrive (wall clock): its own
    /sync, long-polling, only redactions, with a timeline limit no burst reaches
    (nio's default sync would skip what a limited timeline leaves out)."""

    FILTER = json.dumps({"room": {"timeline": {"limit": 1000, "types": ["m.room.redaction"]},
                                  "state": {"types": []}, "ephemeral": {"types": []}},
                         "presence": {"types": []}, "account_data": {"types": []}})

    def __init__(self, hs: LocalSynapse, person: Person) -> None:
        self.at: dict[str, float] = {}
        self._http = MatrixHttp(hs.base_url, person.token)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Seen:
        reply = await self._sync(None, 0)
        self._task = asyncio.create_task(self._run(str(reply.body["next_batch"])))
        return self

    async def _sync(self, since: str | None, timeout_ms: int) -> Any:
        params = {"timeout": str(timeout_ms), "filter": self.FILTER}
        if since is not None:
            params["since"] = since
        reply = await self._http.request("GET", f"{CLIENT_V3}/sync", params=params)
        assert reply.ok, reply
        return reply

    async def _run(self, since: str) -> None:
        while True:
            reply = await self._sync(since, 5000)
            now = time.time()
            for room in reply.body.get("rooms", {}).get("join", {}).values():
                for event in room.get("timeline", {}).get("events", []):
                    target = event.get("redacts") or event.get("content", {}).get("redacts")
                    if isinstance(target, str):
                        self.at.setdefault(target, now)
            since = str(reply.body["next_batch"])

    async def wait(self, ids: list[str], timeout: float) -> None:
        await eventually(lambda: all(e in self.at for e in ids), timeout, interval=0.2,
                         what="all seen redacted")

    async def lags(self, person: Person, room_id: str, ids: list[str],
                   timer_ms: int) -> list[float]:
        """Seen minus deadline, in seconds, for each of ``ids``."""
        lags = []
        for event_id in ids:
            event = await person.event(room_id, event_id)
            lags.append(self.at[event_id] - (event["origin_server_ts"] + timer_ms) / 1000)
        return lags

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.close()


def kind(method: str, path: str, params: Mapping[str, str] | None) -> str:
    if "org.matrix.msc4140.delay" in (params or {}):
        return "schedule"
    if "delayed_events" in path:
        return "cancel" if method == "POST" else "list"
    if "/redact/" in path:
        return "redact"
    if "/event/" in path:
        return "fetch"
    return "other"


def count_requests(http: MatrixHttp) -> Counter[str]:
    """Count each request ``http`` sends from now on, by kind."""
    counts: Counter[str] = Counter()
    original = http.request

    async def counted(method: str, path: str, **kwargs: Any) -> Any:
        counts[kind(method, path, kwargs.get("params"))] += 1
        return await original(method, path, **kwargs)

    http.request = counted  # type: ignore[method-assign]
    return counts


async def start(hs: LocalSynapse, tmp: Path, name: str, delayed: bool) -> BotRoom:
    room = await bot_room(hs, tmp / name, ["alice", "bob"],
                          redaction={"delayed": "auto" if delayed else "off"})
    if delayed:
        status = await room.engine.delayed_status()
        assert status.in_use, status.reason
    return room


async def watched(hs: LocalSynapse, tmp: Path, name: str, delayed: bool,
                  timer_ms: int) -> tuple[BotRoom, Seen]:
    """A bot in a room under after_send ``timer_ms``, and bob's view of it."""
    room = await start(hs, tmp, name, delayed)
    await set_policy(room, Policy.after_send(timer_ms))
    return room, await Seen(hs, room.people[1]).start()


async def settled(room: BotRoom, timeout: float) -> None:
    async def nothing_pending() -> bool:
        return await room.engine.pending_count(room.room_id) == 0

    await eventually(nothing_pending, timeout, interval=0.2, what="nothing pending")


async def requests_per_message(hs: LocalSynapse, tmp: Path, n: int, timer_ms: int,
                               read: bool, delayed: bool) -> dict[str, Any]:
    name = f"a-{'read' if read else 'send'}-{'on' if delayed else 'off'}"
    room = await start(hs, tmp, name, delayed)
    try:
        policy = (Policy.after_read(timer_ms, 4 * timer_ms) if read
                  else Policy.after_send(timer_ms))
        await set_policy(room, policy)
        alice, bob = room.people
        verified = RedactionLog().attach(room.engine)
        assert room.bot.bot is not None and room.bot.bot.http is not None
        counts = count_requests(room.bot.bot.http)
        ids = await send_encrypted(alice, room.room_id, n, rate=RATE)
        if read:
            for event_id in ids:
                await bob.receipt(room.room_id, event_id)
        await verified.wait_for(ids, 4 * timer_ms / 1000 + 120)
        await settled(room, 4 * timer_ms / 1000 + 60)
        stats = room.engine.stats
        # Also counted: send_encrypted's warm-up message and the bot's policy notice.
        return {"delayed": delayed, "read": read, "messages": n + 2,
                "requests": dict(counts), "per_message": sum(counts.values()) / (n + 2),
                "fired": stats.delayed_fired, "done": stats.done}
    finally:
        await room.close()


async def stopped_lag(hs: LocalSynapse, tmp: Path, n: int, timer_ms: int,
                      delayed: bool) -> dict[str, Any]:
    """(b): the bot stops once all are scheduled (on), or keeps running (off)."""
    room, seen = await watched(hs, tmp, f"b-{'on' if delayed else 'off'}", delayed, timer_ms)
    alice, bob = room.people
    try:
        ids = await send_encrypted(alice, room.room_id, n, rate=RATE)
        engine = room.engine
        if delayed:
            async def scheduled() -> bool:
                delays = await engine._store.delays_of(ids)
                return len(delays) == n and all(d.delay_id for d in delays.values())

            await eventually(scheduled, 30, interval=0.1, what="all scheduled")
            before = (await engine.room(room.room_id)).redacted_count  # type: ignore[union-attr]
            await room.bot.stop()
        await seen.wait(ids, timer_ms / 1000 + 120)
        lags = await seen.lags(bob, room.room_id, ids, timer_ms)
        result: dict[str, Any] = {"delayed": delayed, "messages": n, **spread(lags),
                                  "min_s": min(lags)}
        if delayed:
            restarted = time.monotonic()
            await room.bot.start()
            engine = room.engine
            await settled(room, 120)
            row = await engine.room(room.room_id)
            assert row is not None
            result.update({"counted": row.redacted_count - before,
                           "fired_seen_on_restart": engine.stats.delayed_fired,
                           "redacted_by_lethe": engine.stats.done - engine.stats.delayed_fired,
                           "restart_to_settled_s": time.monotonic() - restarted})
        return result
    finally:
        await seen.close()
        await room.close()


async def burst(hs: LocalSynapse, tmp: Path, n: int, timer_ms: int,
                delayed: bool) -> dict[str, Any]:
    """(c): ``n`` messages as fast as they go, all due at about the same time."""
    room, seen = await watched(hs, tmp, f"c-{'on' if delayed else 'off'}", delayed, timer_ms)
    alice, bob = room.people
    try:
        sent_at = time.time()
        ids = await send_encrypted(alice, room.room_id, n)
        send_s = time.time() - sent_at
        await seen.wait(ids, timer_ms / 1000 + 300)
        lags = await seen.lags(bob, room.room_id, ids, timer_ms)
        deadlines = [seen.at[e] - lag for e, lag in zip(ids, lags, strict=True)]
        span = max(seen.at[e] for e in ids) - min(deadlines)
        await settled(room, 120)
        stats = room.engine.stats
        return {"delayed": delayed, "messages": n, "send_s": send_s, **spread(lags),
                "per_s": n / span, "fired": stats.delayed_fired,
                "redacted_by_lethe": stats.done - stats.delayed_fired}
    finally:
        await seen.close()
        await room.close()


def report_requests(a: list[dict[str, Any]]) -> None:
    rows = []
    for read in (False, True):
        off, on = (r for r in a if r["read"] is read)
        rows.append(["after_read, read at once" if read else "after_send",
                     off["per_message"], on["per_message"],
                     on["per_message"] - off["per_message"],
                     ", ".join(f"{k} {v}" for k, v in sorted(on["requests"].items())),
                     f"{on['fired']}/{on['done']}"])
    print(table("(a) the bot's own requests per message (sync aside), delayed redactions "
                "off vs on", ["policy", "off", "on", "extra", "on: by kind", "on: fired/done"],
                rows), flush=True)


def report_stopped(b: list[dict[str, Any]], messages: int, timer_s: int) -> None:
    off, on = b
    print(table(f"(b) lag (s): another client sees the redaction - its deadline; "
                f"{messages} messages, after_send {timer_s}s",
                ["", "p50", "p99", "max", "min"],
                [["bot running, delayed off (baseline)", off["p50_s"], off["p99_s"],
                  off["max_s"], off["min_s"]],
                 ["bot stopped, the homeserver's delayed redactions", on["p50_s"],
                  on["p99_s"], on["max_s"], on["min_s"]]]))
    print(f"after the restart: counted {on['counted']} (the {messages} messages, the warm-up "
          f"and the policy notice), "
          f"{on['redacted_by_lethe']} redacted by Lethe, settled in "
          f"{on['restart_to_settled_s']:.1f} s; p99 ratio stopped/running "
          f"{on['p99_s'] / max(off['p99_s'], 1e-3):.2f}", flush=True)


def report_burst(c: list[dict[str, Any]], burst_size: int) -> None:
    off, on = c
    print(table(f"(c) a burst of {burst_size} due together, bot running: lag (s) and the "
                "rate they are seen redacted", ["", "sent in s", "p50", "p99", "max", "per s",
                                                "fired/by Lethe"],
                [["delayed off", off["send_s"], off["p50_s"], off["p99_s"], off["max_s"],
                  off["per_s"], f"0/{off['redacted_by_lethe']}"],
                 ["delayed on", on["send_s"], on["p50_s"], on["p99_s"], on["max_s"],
                  on["per_s"], f"{on['fired']}/{on['redacted_by_lethe']}"]]))
    print(f"ratios on/off: p99 {on['p99_s'] / max(off['p99_s'], 1e-3):.2f}, "
          f"rate {on['per_s'] / off['per_s']:.2f}", flush=True)


async def main(messages: int, burst_size: int, timer_s: int,
               parts: str = "abc") -> dict[str, Any]:
    quiet_logging()
    timer_ms = timer_s * 1000
    with local_synapse(delayed_redactions("1d", per_user=10_000)) as hs, \
            tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmpdir:
        tmp = Path(tmpdir)
        a: list[dict[str, Any]] = []
        b: list[dict[str, Any]] = []
        c: list[dict[str, Any]] = []
        if "a" in parts:
            print(f"(a) requests per message, {messages} messages at {RATE:.0f}/s", flush=True)
            a = [await requests_per_message(hs, tmp, messages, timer_ms, read, delayed)
                 for read in (False, True) for delayed in (False, True)]
            report_requests(a)
        if "b" in parts:
            print(f"\n(b) lag with the bot stopped, {messages} messages", flush=True)
            b = [await stopped_lag(hs, tmp, messages, timer_ms, delayed)
                 for delayed in (False, True)]
            report_stopped(b, messages, timer_s)
        if "c" in parts:
            print(f"\n(c) a burst of {burst_size} due together", flush=True)
            c = [await burst(hs, tmp, burst_size, timer_ms, delayed)
                 for delayed in (False, True)]
            report_burst(c, burst_size)
    return {"timer_ms": timer_ms, "rate_per_s": RATE, "requests": a, "stopped": b,
            "burst": c}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--timer", type=int, default=15)
    parser.add_argument("--parts", default="abc", help="which of a, b, c to run")
    args = parser.parse_args()
    result = asyncio.run(main(args.messages, args.burst, args.timer, args.parts))
    print(f"\nwrote {save('delayed', result)}")
