"""A standby bridge takes over: two `lethe bridge run` processes on one PostgreSQL
database, behind one URL the homeserver pushes to, the active one killed (SIGKILL)
while 200 redactions are due.

The homeserver's registration points at a small forwarding proxy in the test, which
does what docs/bridge.md asks of a load balancer: it sends each request to the bridge
whose ``GET /health`` answers 200. It also sends a copy of every push to the other
bridge (a load balancer's mistake), and records what that one answered: a standby
must answer 503, never 200, to a transaction it did not commit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from bot.devtools.localpostgres import LocalPostgres
from bot.devtools.localsynapse import find_free_port
from bot.engine.store.leader import lock_key
from bot.engine.store.postgres import connect
from tests import test_bridge
from tests.conftest import pg_database
from tests.harness import LetheProcess, eventually
from tests.test_bridge import BridgeServer
from tests.test_faults import lag_lines, redactions, send_raw

# The module's own Synapse with the registration loaded; its ``port`` (the
# registration's url) is the proxy's here.
bridge_server = test_bridge.bridge_server
synapse = test_bridge.synapse

EVENTS = 200
TIMER = "10s"


@dataclass
class Proxy:
    """The one URL the homeserver pushes to, in front of the bridges' own ports."""

    backends: dict[str, int]  # name -> port
    strays: list[tuple[str, int | None, str]] = field(default_factory=list)  # name, status, role
    served: list[tuple[str, int]] = field(default_factory=list)  # name, status
    _session: aiohttp.ClientSession | None = None

    async def health(self, name: str) -> tuple[int | None, str]:
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://127.0.0.1:{self.backends[name]}/health",
                timeout=aiohttp.ClientTimeout(total=2),
            ) as resp:
                return resp.status, (await resp.json()).get("role", "")
        except (aiohttp.ClientError, TimeoutError):
            return None, "down"

    async def forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        health = {name: await self.health(name) for name in self.backends}
        active = next((n for n, (status, _) in health.items() if status == 200), None)
        response = web.json_response({"errcode": "M_UNKNOWN", "error": "no bridge"},
                                     status=503)
        for name, port in self.backends.items():
            try:
                async with self._session.request(
                    request.method, f"http://127.0.0.1:{port}{request.path_qs}", data=body,
                    headers={k: v for k, v in request.headers.items()
                             if k.lower() in ("authorization", "content-type")},
                ) as resp:
                    status, data = resp.status, await resp.read()
            except aiohttp.ClientError:
                status, data = None, b""
            if name == active:
                self.served.append((name, status or 502))
                response = web.Response(status=status or 502, body=data,
                                        content_type="application/json")
            elif "/transactions/" in request.path:
                self.strays.append((name, status, health[name][1]))
        return response

    async def start(self, port: int) -> web.AppRunner:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def test_standby_takes_over_after_sigkill_with_nothing_lost_or_twice(
    bridge_server: BridgeServer, postgres: LocalPostgres, people, tmp_path: Path
) -> None:
    database = pg_database(postgres)
    ports = {"first": find_free_port(), "second": find_free_port()}
    configs = {
        name: bridge_server.config(
            tmp_path / name, database=database.url,
            listen={"host": "127.0.0.1", "port": port},
            default_policy={"mode": "after_send", "timer": TIMER})
        for name, port in ports.items()
    }
    for config in configs.values():  # two workers: 200 redactions take a while
        data = yaml.safe_load(config.path.read_text())
        config.path.write_text(yaml.safe_dump({**data, "redaction": {"workers": 2}}))
    proxy = Proxy(ports)
    runner = await proxy.start(bridge_server.port)
    procs = {name: LetheProcess(["bridge", "run", "-c", str(configs[name].path)],
                                tmp_path / f"{name}.log") for name in ports}
    try:
        await procs["first"].start()
        await eventually(lambda: _role(proxy, "first", "active"), 30, what="first active")
        await procs["second"].start()
        await eventually(lambda: "standby:" in procs["second"].output(), 30,
                         what="second waiting as the standby")
        assert await proxy.health("second") == (503, "standby")

        alice = await people("alice")
        room = await alice.create_room(encrypted=False)
        targets = await send_raw(alice, room, EVENTS)
        first = procs["first"]
        await eventually(lambda: len(set(targets) & set(lag_lines(first.output(), room))) >= 40,
                         90, interval=0.05, what="the first bridge redacting (40 done)")
        killed_at = time.monotonic()
        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
        await eventually(lambda: _role(proxy, "second", "active"), 30, interval=0.02,
                         what="the standby taking over")
        takeover_s = time.monotonic() - killed_at
        print(f"takeover: {takeover_s:.2f} s from SIGKILL to the standby's /health 200")
        done_by_first = len(set(targets) & set(lag_lines(first.output(), room)))
        assert done_by_first < EVENTS, "the kill came after the last redaction"

        async def all_done() -> bool:
            return set(targets) <= set(await redactions(alice, room))

        await eventually(all_done, 120, interval=0.5, what=f"all {EVENTS} redacted")
        # A message sent now is pushed to the new active bridge, stored and redacted.
        (late,) = await send_raw(alice, room, 1)
        await eventually(lambda: _has(alice, room, late), 60, interval=0.5,
                         what="a message sent after the takeover redacted")
        assert await procs["second"].signal(signal.SIGTERM, timeout=15) == 0
    finally:
        for proc in procs.values():
            await proc.close()
        await runner.cleanup()
        await proxy.close()

    seen = await redactions(alice, room)
    twice = {t: len(seen.get(t, [])) for t in targets if len(seen.get(t, [])) != 1}
    assert twice == {}, f"not redacted exactly once: {twice}"
    # Copies of pushes sent to the bridge that was not active: never a 200 from a
    # standby (it stored nothing); there were some to answer.
    standby_answers = [status for _, status, role in proxy.strays if role == "standby"]
    assert standby_answers, "no push reached the standby: the check proved nothing"
    assert set(standby_answers) == {503}, proxy.strays
    assert ("second", 200) in proxy.served, "the new active bridge took no push"
    for name in ports:
        output = procs[name].output()
        assert "Traceback" not in output, output[-3000:]
        assert database.password is None or database.password not in output
    print(f"first redacted {done_by_first} of {EVENTS} before the kill; "
          f"{len(standby_answers)} pushes answered 503 by the standby")


async def _role(proxy: Proxy, name: str, role: str) -> bool:
    return await proxy.health(name) == ((200 if role == "active" else 503), role)


async def _has(person: object, room: str, event_id: str) -> bool:
    return event_id in await redactions(person, room)  # type: ignore[arg-type]


async def test_active_bridge_cut_off_from_the_database_leads_on_or_stops(
    bridge_server: BridgeServer, postgres: LocalPostgres, tmp_path: Path
) -> None:
    """Its connection gone, the lock went with it. Nobody took it: the bridge makes the
    connection again at once, takes the lock again and leads on. Another took it: the
    process exits (3) rather than write on, and a supervisor would start it again as a
    standby."""
    database = pg_database(postgres)
    config = bridge_server.config(tmp_path / "cut", database=database.url,
                                  listen={"host": "127.0.0.1", "port": find_free_port()})
    proc = LetheProcess(["bridge", "run", "-c", str(config.path)], tmp_path / "cut.log")
    await proc.start()
    taker = None
    try:
        await eventually(lambda: "active: this process holds the bridge lock" in proc.output()
                         or proc.returncode is not None, 30, what="the bridge active")
        assert proc.returncode is None, proc.output()[-2000:]
        assert proc.proc is not None
        mine = f"application_name LIKE 'lethe bridge on % pid {proc.proc.pid}'"
        postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {mine}",
                      "lethe_tests")
        await eventually(lambda: "this process still leads" in proc.output()
                         or proc.returncode is not None, 15, what="the lock taken again")
        assert proc.returncode is None, proc.output()[-2000:]

        taker = await connect(database)
        key = lock_key("bridge", await taker.fetchval("SELECT current_schema()"))
        await taker.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {mine}")
        await asyncio.wait_for(taker.execute("SELECT pg_advisory_lock($1::bigint)", key), 10)
        code = await asyncio.wait_for(proc.proc.wait(), 15)
        assert code == 3, proc.output()[-2000:]
        assert "no longer the active lethe bridge" in proc.output()
        assert database.password is None or database.password not in proc.output()
    finally:
        if taker is not None:
            await taker.close()
        await proc.close()
