"""Shared bits of the benchmarks: timing, percentiles, a table, and JSON results.

Every benchmark reports ratios against a baseline measured in the same script on
the same machine, so the numbers mean something on a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import resource
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.synapsedb import local_synapse as local_synapse
from bench.synapsedb import versions
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person, eventually
from bot.engine.engine import Engine
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.matrix.api import CLIENT_V3, MatrixHttp, q
from tests.harness import BotHandle, write_bot_config

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        # The machine is shared: how busy it was (1, 5, 15 min) when the run ended.
        "load_average": list(os.getloadavg()),
    }


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of latencies in seconds, as the JSON results name them."""
    return {"p50_s": percentile(values, 50), "p99_s": percentile(values, 99),
            "max_s": max(values, default=float("nan"))}


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title, ""]
    for n, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def save(name: str, data: dict[str, Any], synapse_db: str | None = None) -> Path:
    """bench/results/NAME.json; against Synapse on PostgreSQL, NAME-postgres.json.
    ``synapse_db``: the benchmark's homeserver database, recorded with the versions."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = f"-{synapse_db}" if synapse_db not in (None, "sqlite") else ""
    path = RESULTS / f"{name}{suffix}.json"
    homeserver = {} if synapse_db is None else {
        "synapse_db": synapse_db, "versions": versions(synapse_db)}
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), **homeserver, **data}
    path.write_text(json.dumps(payload, indent=2))
    return path


# --- homeserver helpers (benchmarks 1, 2, 3, 5) -----------------------------------------


def quiet_logging() -> None:
    """Warnings only: per-event INFO lines would cost the bot time the baseline never pays."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("nio").setLevel(logging.ERROR)  # e.g. undecryptable warm-up messages


async def create_room(http: MatrixHttp, invite: Sequence[str], power: dict[str, int],
                      *, encrypted: bool = False) -> str:
    """A room the token's user creates (and, from room version 12, so has unlimited
    power: it must not be named in ``power``)."""
    initial_state = [{"type": "m.room.encryption", "state_key": "",
                      "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if encrypted else []
    reply = await http.request("POST", f"{CLIENT_V3}/createRoom", json={
        "preset": "private_chat", "invite": list(invite), "initial_state": initial_state,
        "power_level_content_override": {"users": power},
    })
    assert reply.ok, reply
    return str(reply.body["room_id"])


async def join(http: MatrixHttp, room_id: str) -> None:
    reply = await http.request("POST", f"{CLIENT_V3}/join/{q(room_id)}", json={})
    assert reply.ok, reply


async def send_plain(http: MatrixHttp, rooms: Sequence[str], count: int,
                     concurrency: int = 16) -> list[tuple[str, str]]:
    """``count`` unencrypted text messages spread round-robin over ``rooms``, sent
    ``concurrency`` at a time; returns (room_id, event_id) in sending order."""
    out: list[tuple[str, str] | None] = [None] * count
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            room = rooms[i % len(rooms)]
            reply = await http.request(
                "PUT", f"{CLIENT_V3}/rooms/{q(room)}/send/m.room.message/bench{i}x{id(out)}",
                json={"msgtype": "m.text", "body": f"bench message {i}"})
            assert reply.ok, reply
            out[i] = (room, str(reply.body["event_id"]))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [o for o in out if o is not None]


@dataclass(frozen=True)
class VerifiedRedaction:
    event_id: str
    room_id: str
    lag_ms: int  # the scheduler's own number: verified - due
    at: float  # wall clock (time.time()) when the scheduler recorded it


class RedactionLog:
    """Every redaction an engine verifies, as its scheduler reports it: through its
    observer hook where it has one, else from its "redacted ..." log record."""

    def __init__(self) -> None:
        self.done: dict[str, VerifiedRedaction] = {}
        self.changed = asyncio.Event()
        self._handler: logging.Handler | None = None

    def attach(self, engine: Engine) -> RedactionLog:
        observe = getattr(engine, "observe_redactions", None)
        if observe is not None:
            observe(lambda event, lag_ms: self._add(VerifiedRedaction(
                event.event_id, event.room_id, lag_ms, time.time())))
            return self
        log = RedactionLog._Handler(self)
        self._handler = log
        logger = logging.getLogger("bot.engine.scheduler")
        logger.addHandler(log)
        logger.setLevel(logging.INFO)
        return self

    def detach(self) -> None:
        if self._handler is not None:
            logging.getLogger("bot.engine.scheduler").removeHandler(self._handler)
            self._handler = None

    def _add(self, item: VerifiedRedaction) -> None:
        self.done[item.event_id] = item
        self.changed.set()

    async def wait_for(self, event_ids: Iterable[str], timeout: float) -> list[VerifiedRedaction]:
        """Wait until every one of ``event_ids`` is verified; raise on the deadline."""
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.done.keys():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(wanted - self.done.keys())
                raise TimeoutError(f"{missing} of {len(wanted)} redactions not verified "
                                   f"after {timeout:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return [self.done[e] for e in wanted]

    class _Handler(logging.Handler):
        def __init__(self, target: RedactionLog) -> None:
            super().__init__(logging.INFO)
            self.target = target

        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("redacted %s in %s") and isinstance(record.args, tuple):
                event_id, room_id, lag_s = record.args
                self.target._add(VerifiedRedaction(
                    str(event_id), str(room_id), round(float(lag_s) * 1000), record.created))


# --- the real bot in an encrypted room (benchmarks 2, 3, 5) ------------------------------


@dataclass
class BotRoom:
    """The real LetheBot, run in this event loop as `lethe run` would run it, in
    encrypted rooms its people share; ``people[0]`` creates them and gives the bot
    power."""

    bot: BotHandle
    people: list[Person]
    room_id: str

    @property
    def engine(self) -> Engine:
        assert self.bot.bot is not None and self.bot.bot.engine is not None
        return self.bot.bot.engine

    async def add_room(self) -> str:
        """Another encrypted room with the same people and bot (once the bot is there)."""
        creator = self.people[0]
        room_id = await creator.create_room(
            [p.user_id for p in self.people[1:]] + [self.bot.user_id],
            power={self.bot.user_id: 100})
        for person in self.people[1:]:
            await person.join(room_id)
        await creator.wait_notice(room_id, "Lethe is here", timeout=60)
        return room_id

    async def close(self) -> None:
        await self.bot.stop()
        for person in self.people:
            await person.close()


async def bot_room(hs: LocalSynapse, workdir: Path, names: Sequence[str],
                   **config: Any) -> BotRoom:
    """``config``: overrides of the bot's config sections (write_bot_config)."""
    people = []
    for name in names:
        person = Person(hs, f"{name}{secrets.token_hex(3)}", workdir / "people" / name)
        await person.start()
        people.append(person)
    handle = BotHandle(write_bot_config(hs, workdir / "bot", **config))
    await handle.start()
    room = BotRoom(handle, people, "")
    room.room_id = await room.add_room()
    return room


async def set_policy(room: BotRoom, policy: Policy, room_id: str | None = None) -> None:
    """Put ``policy`` in the state of ``room_id`` (default: the first room) as its
    creator and wait until the bot has it; the bot's announcement is awaited too, so
    it does not land in a measurement."""
    room_id = room_id or room.room_id
    creator = room.people[0]
    assert await creator.put_state(room_id, POLICY_EVENT_TYPE, policy.to_state()) == 200

    async def applied() -> bool:
        row = await room.engine.room(room_id)
        return row is not None and row.policy == policy

    await eventually(applied, 30, what="the bot applying the policy")
    await creator.wait_notice(room_id, f"changed the retention policy: {policy.describe()}",
                              timeout=30)


async def send_encrypted(person: Person, room_id: str, count: int,
                         rate: float | None = None, concurrency: int = 16,
                         on_sent: Callable[[str, float], None] | None = None) -> list[str]:
    """``count`` Megolm-encrypted messages from ``person``: encrypted here with its nio
    client, then PUT directly so that many can be in flight. With ``rate`` they start
    at that many per second whatever the homeserver's latency (open-loop load), else
    ``concurrency`` at a time. ``on_sent`` hears of each event id as its PUT returns, with the
    wall-clock time the PUT started.
    Returns the event ids in sending order."""
    client = person.client
    await person.send(room_id, "bench: warm-up")  # members synced, session shared
    ids: list[str | None] = [None] * count
    nonce = secrets.token_hex(4)
    lock = asyncio.Lock()

    async def encrypted(i: int) -> dict[str, Any]:
        async with lock:  # one session share at a time (Megolm rotates every 100 messages)
            assert client.olm is not None
            if client.olm.should_share_group_session(room_id):
                await client.share_group_session(room_id, ignore_unverified_devices=True)
            _, content = client.encrypt(room_id, "m.room.message",
                                        {"msgtype": "m.text", "body": f"bench message {i}"})
        return content

    async def send(i: int, content: dict[str, Any]) -> None:
        started = time.time()
        status, body = await person.api(
            "PUT", f"/rooms/{q(room_id)}/send/m.room.encrypted/bench{nonce}.{i}", content)
        if status != 200:
            raise RuntimeError(f"send failed: HTTP {status} {body.get('errcode')}")
        ids[i] = str(body["event_id"])
        if on_sent is not None:
            on_sent(ids[i], started)

    if rate is None:
        work = iter(range(count))

        async def worker() -> None:
            for i in work:
                await send(i, await encrypted(i))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(send(i, await encrypted(i))))
        await asyncio.gather(*tasks)
    return [i for i in ids if i is not None]
