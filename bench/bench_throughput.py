"""Benchmark 1: redaction throughput against the homeserver's own limit.

A local Synapse with rate limits raised. A sender posts unencrypted messages
(redaction costs the same for encrypted ones); the bot account is a moderator.

- Baseline: a minimal aiohttp client, with the bot's token, PUTs /redact for its
  share of the events with C requests in flight and nothing else: the physical
  limit of this homeserver on this machine. It runs in two halves, one before
  and one after Lethe, so a homeserver that slows down as its database grows
  does not favour either side.
- Lethe: a real Engine with the real HttpTransport tracks N other events, all
  due at the same instant T (after_send); measured from T until the last one is
  verified (Lethe redacts, then GETs the event to check it is empty).
- Also reported: the baseline at C=16, and the baseline that verifies as Lethe
  does (PUT /redact, then GET /event), which separates the cost of verifying on
  the homeserver from the cost of Lethe's own machinery.

Run: python -m bench.bench_throughput [--events N] [--rooms 1 50]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import (
    RedactionLog,
    Timer,
    create_room,
    join,
    local_synapse,
    quiet_logging,
    save,
    send_plain,
    table,
)
from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import Message, PolicyEvent, RoomUpdate
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.engine.redactor import REDACTION_REASON
from bot.localsynapse import LocalSynapse, RegisteredUser
from bot.matrix.http import CLIENT_V3, HttpTransport, MatrixHttp, q

WORKERS = EngineConfig("@x:y").workers  # Lethe's default number of redaction workers
TIMER_MS = 1000
LEAD_MS = 3000  # T is this far after ingest starts: time to store every event first

Target = tuple[str, str]  # (room_id, event_id)


async def redact_once(session: aiohttp.ClientSession, base_url: str, room_id: str,
                      event_id: str, txn_id: str, *, verify: bool = False) -> None:
    """One PUT /redact on a session that carries the moderator's token; with
    ``verify``, then one GET of the event, which must come back with empty content."""
    path = f"{base_url}{CLIENT_V3}/rooms/{q(room_id)}"
    async with session.put(f"{path}/redact/{q(event_id)}/{q(txn_id)}",
                           json={"reason": REDACTION_REASON}) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"baseline redaction failed: HTTP {resp.status}")
    if verify:
        async with session.get(f"{path}/event/{q(event_id)}") as resp:
            if resp.status != 200 or (await resp.json()).get("content"):
                raise RuntimeError(f"baseline verification failed: HTTP {resp.status}")


def baseline_session(token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})


async def baseline_redact(base_url: str, token: str, targets: Sequence[Target],
                          concurrency: int, *, verify: bool = False) -> float:
    """Redact every target with ``concurrency`` requests in flight, as fast as the
    homeserver answers; returns the seconds it took. No storage; verification (one
    GET per event, as Lethe does) only if asked."""
    nonce = secrets.token_hex(4)
    work = iter(enumerate(targets))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i, (room_id, event_id) in work:
            await redact_once(session, base_url, room_id, event_id, f"base{nonce}.{i}",
                              verify=verify)

    async with baseline_session(token) as session:
        with Timer() as t:
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return t.seconds


async def lethe_redact(base_url: str, token: str, bot_id: str, sender: str,
                       targets: Sequence[Target], workdir: Path) -> dict[str, float]:
    """Track ``targets`` in a fresh Engine, all due at one instant T; returns the
    seconds from T until the last one was verified, and the redactor's counters."""
    http = MatrixHttp(base_url, token)
    engine = await Engine.open(workdir / "lethe.db", HttpTransport(http),
                               EngineConfig(bot_id, workers=WORKERS))
    verified = RedactionLog().attach(engine)
    try:
        await engine.start()
        by_room: dict[str, list[str]] = defaultdict(list)
        for room_id, event_id in targets:
            by_room[room_id].append(event_id)
        now = engine.clock.now_ms()
        policy = Policy.after_send(TIMER_MS).to_state()
        await engine.ingest([
            RoomUpdate(room_id, (PolicyEvent(POLICY_EVENT_TYPE, sender, now, policy, True,
                                             f"$policy{n}"),))
            for n, room_id in enumerate(by_room)
        ])
        due = now + LEAD_MS
        # Sent TIMER_MS before T as far as the engine knows, so all are due at T.
        await engine.ingest([
            RoomUpdate(room_id, tuple(Message(e, sender, due - TIMER_MS) for e in events))
            for room_id, events in by_room.items()
        ])
        if engine.clock.now_ms() >= due:
            raise RuntimeError("ingest took longer than LEAD_MS; raise it")
        done = await verified.wait_for([e for _, e in targets], timeout=600)
        pending = await engine.store.pending_count()
        if pending:
            raise RuntimeError(f"{pending} events still pending after all were verified")
        stats = engine.stats
        return {"seconds": max(d.lag_ms for d in done) / 1000, "retries": stats.retries,
                "rate_limited": stats.rate_limited, "failures": stats.failures}
    finally:
        verified.detach()
        await engine.close()
        await http.close()


@dataclass(frozen=True)
class Setup:
    sender: RegisteredUser
    bot: RegisteredUser  # a moderator (power 100) in every room
    events: list[Target]  # pre-sent by ``sender``, round-robin over the rooms


async def setup(hs: LocalSynapse, rooms: int, total: int) -> Setup:
    suffix = secrets.token_hex(3)
    sender = hs.register(f"sender{suffix}")
    bot = hs.register(f"lethe{suffix}")
    sender_http = MatrixHttp(hs.base_url, sender.access_token)
    bot_http = MatrixHttp(hs.base_url, bot.access_token)
    try:
        room_ids = [await create_room(sender_http, [bot.user_id], {bot.user_id: 100})
                    for _ in range(rooms)]
        for room_id in room_ids:
            await join(bot_http, room_id)
        with Timer() as presend:
            events = await send_plain(sender_http, room_ids, total)
    finally:
        await sender_http.close()
        await bot_http.close()
    print(f"  pre-sent {total:,} events over {rooms} room(s) in {presend.seconds:.1f} s "
          f"({total / presend.seconds:,.0f}/s)", flush=True)
    return Setup(sender, bot, events)


async def baseline_rate(hs: LocalSynapse, n: int, concurrency: int = WORKERS) -> float:
    """The homeserver's redaction limit here and now: ``n`` fresh events in one room,
    redacted by the baseline client; redactions per second."""
    s = await setup(hs, 1, n)
    return n / await baseline_redact(hs.base_url, s.bot.access_token, s.events, concurrency)


async def scenario(hs: LocalSynapse, n: int, rooms: int) -> dict[str, float]:
    """On separate shares of events pre-sent over ``rooms`` rooms: the baseline
    (C = Lethe's workers; N/2 before Lethe, N/2 after), the baseline that also
    verifies (N/4), Lethe (N), and the baseline at C=16 (N/4)."""
    s = await setup(hs, rooms, 2 * n + n // 2)
    token = s.bot.access_token
    events = s.events
    # Interleaved slices, so each share has events from every room.
    base_a, lethe_part, base_b = events[0:2 * n:4], events[1:2 * n:2], events[3:2 * n:4]
    verify_part, c16_part = events[2 * n::2], events[2 * n + 1::2]

    result: dict[str, float] = {"events": n, "rooms": rooms}
    base_s = await baseline_redact(hs.base_url, token, base_a, WORKERS)
    result["baseline_verify_per_s"] = len(verify_part) / await baseline_redact(
        hs.base_url, token, verify_part, WORKERS, verify=True)
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        lethe = await lethe_redact(hs.base_url, token, s.bot.user_id, s.sender.user_id,
                                   lethe_part, Path(tmp))
    base_s += await baseline_redact(hs.base_url, token, base_b, WORKERS)
    result["baseline_c16_per_s"] = len(c16_part) / await baseline_redact(
        hs.base_url, token, c16_part, 16)
    result["baseline_per_s"] = (len(base_a) + len(base_b)) / base_s
    result["lethe_per_s"] = len(lethe_part) / lethe["seconds"]
    result["ratio"] = result["lethe_per_s"] / result["baseline_per_s"]
    result["ratio_to_verifying"] = result["lethe_per_s"] / result["baseline_verify_per_s"]
    result.update({f"lethe_{k}": v for k, v in lethe.items() if k != "seconds"})
    return result


async def main(n: int, room_counts: Sequence[int]) -> dict[str, object]:
    quiet_logging()
    results = []
    with local_synapse() as hs:
        for rooms in room_counts:
            print(f"{n:,} events over {rooms} room(s):", flush=True)
            results.append(await scenario(hs, n, rooms))
    rows = [[f"{r['events']:,} events, {r['rooms']} room(s)", r["baseline_per_s"],
             r["baseline_c16_per_s"], r["baseline_verify_per_s"], r["lethe_per_s"],
             f"{r['ratio']:.2f}", "ok" if r["ratio"] >= 0.9 else "MISSED",
             f"{r['ratio_to_verifying']:.2f}"]
            for r in results]
    print()
    print(table(f"Redaction throughput (redactions/s; C = {WORKERS}, Lethe's workers, unless "
                "said; ratios are same-script comparisons, goal >= 0.9)",
                ["case", f"baseline C={WORKERS}", "baseline C=16",
                 f"baseline + GET verify C={WORKERS}", "Lethe (due -> verified)", "ratio", "",
                 "ratio to verifying baseline"], rows))
    return {"workers": WORKERS, "scenarios": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()
    result = asyncio.run(main(args.events, args.rooms))
    print(f"\nwrote {save('throughput', result)}")
