"""Fixtures for the engine's unit tests: a real temporary SQLite file, a fake clock
and a fake Transport. Nothing here sleeps for a fixed time: waits poll a condition
until a deadline."""

from __future__ import annotations

import asyncio
import inspect
import re
import sqlite3
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import settings

from bot.engine.clock import FakeClock
from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import (
    IngestResult,
    PolicyEvent,
    Receipt,
    Redaction,
    RoomUpdate,
    TimelineItem,
)
from bot.engine.policy import POLICY_EVENT_TYPE, Policy
from bot.engine.redactor import Outcome, Reply
from bot.engine.store import Database
from bot.engine.store.pgsql import translate

# No per-example deadline to flake on a slow CI machine.
settings.register_profile("lethe-unit", deadline=None)
settings.load_profile("lethe-unit")

BOT = "@bot:x"
ALICE = "@alice:x"
BOB = "@bob:x"
CAROL = "@carol:x"
DAVE = "@dave:x"
ADMIN = "@admin:x"
ROOM = "!room:x"
T0 = 1_700_000_000_000

Predicate = Callable[[], Any]


async def eventually(predicate: Predicate, timeout: float = 5, what: str = "") -> Any:
    """Poll ``predicate`` (sync or async) every 10 ms until it is truthy; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.01)


class TestClock(FakeClock):
    """FakeClock that knows who sleeps on it, so tests can tell when the scheduler is idle."""

    __test__ = False

    def __init__(self, start_ms: int = T0) -> None:
        super().__init__(start_ms)
        self._sleepers: dict[int, tuple[int, asyncio.Event, asyncio.Task[Any] | None]] = {}
        self._next = 0

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        self._next += 1
        key = self._next
        self._sleepers[key] = (deadline_ms, wake, asyncio.current_task())
        try:
            await super().sleep_until(deadline_ms, wake)
        finally:
            del self._sleepers[key]

    def idle(self) -> bool:
        """Somebody sleeps on the clock and nobody is about to wake up."""
        now = self.now_ms()
        return bool(self._sleepers) and all(
            deadline > now and not wake.is_set() for deadline, wake, _ in self._sleepers.values()
        )

    def sleeping(self, task: asyncio.Task[Any] | None) -> bool:
        """``task`` sleeps on the clock (rather than working between two sleeps)."""
        return any(sleeper is task for _, _, sleeper in self._sleepers.values())


class FakeTransport:
    """Records calls; replies are scripted per event id (default: OK / whatever is true).

    A successful redact marks the event redacted, so ``check`` then says REDACTED;
    otherwise ``check`` says PRESENT. Like a homeserver it returns the id of the
    redaction event it made (``redaction_id``: the same for a resent request, as a
    homeserver deduplicating by txn id does). ``on_redact`` runs inside ``redact``
    before it replies (to inspect the database, or to block)."""

    def __init__(self) -> None:
        self.redact_calls: list[tuple[str, str, str, str]] = []
        self.check_calls: list[tuple[str, str, str]] = []
        self.redacted: set[str] = set()
        self._redact_replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._check_replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.on_redact: Callable[[str, str, str, str], Awaitable[None]] | None = None

    def script_redact(self, event_id: str, *replies: Reply) -> None:
        self._redact_replies[event_id].extend(replies)

    def script_check(self, event_id: str, *replies: Reply) -> None:
        self._check_replies[event_id].extend(replies)

    def redacted_ids(self) -> list[str]:
        return [call[1] for call in self.redact_calls]

    def checked_ids(self) -> list[str]:
        return [call[1] for call in self.check_calls]

    @staticmethod
    def redaction_id(event_id: str) -> str:
        """The id of the redaction event a successful redact of ``event_id`` returns."""
        return f"$redaction-{event_id}"

    def echo(self, event_id: str, sender: str = BOT) -> Redaction:
        """Our redaction of ``event_id`` coming back through the event stream."""
        return Redaction(event_id, self.redaction_id(event_id), sender)

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        self.redact_calls.append((room_id, event_id, sender, txn_id))
        if self.on_redact is not None:
            await self.on_redact(room_id, event_id, sender, txn_id)
        queue = self._redact_replies[event_id]
        ok = Reply(Outcome.OK, event_id=self.redaction_id(event_id))
        reply = queue.popleft() if queue else ok
        if reply.outcome is Outcome.OK:
            self.redacted.add(event_id)
        return reply

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        self.check_calls.append((room_id, event_id, sender))
        queue = self._check_replies[event_id]
        if queue:
            return queue.popleft()
        return Reply(Outcome.REDACTED if event_id in self.redacted else Outcome.PRESENT)


class Harness:
    """One engine on a temporary database, driven by a TestClock."""

    __test__ = False

    def __init__(
        self,
        database: Database | Path,
        *,
        clock: TestClock | None = None,
        transport: FakeTransport | None = None,
        config: EngineConfig | None = None,
        on_park: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.database = database = (Database.sqlite(database) if isinstance(database, Path)
                                    else database)
        self.path = database.path  # SQLite's file (None on PostgreSQL)
        self.on_park = on_park
        self.clock = clock or TestClock()
        self.transport = transport or FakeTransport()
        self.config = config or EngineConfig(bot_user_id=BOT)
        self.engine: Engine | None = None

    @property
    def store(self) -> Any:
        """The database, for looking (and, in a few tests, writing behind the engine)."""
        assert self.engine is not None
        return self.engine._store

    async def start(self) -> Harness:
        self.engine = await Engine.open(
            self.database, self.transport, self.config, clock=self.clock,
            on_park=self.on_park
        )
        await self.engine.start()
        await self.settle()
        return self

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
            self.engine = None

    def now(self) -> int:
        return self.clock.now_ms()

    # --- driving -----------------------------------------------------------

    async def ingest(
        self,
        *timeline: TimelineItem,
        receipts: tuple[Receipt, ...] = (),
        room: str = ROOM,
        meta: dict[str, str] | None = None,
        settle: bool = True,
    ) -> IngestResult:
        assert self.engine is not None
        result = await self.engine.ingest(
            [RoomUpdate(room, tuple(timeline), tuple(receipts))], meta=meta
        )
        if settle:
            await self.settle()
        return result

    async def receipts(self, *receipts: Receipt, room: str = ROOM) -> IngestResult:
        return await self.ingest(receipts=receipts, room=room)

    def policy_event(self, policy: Policy, sender: str = ADMIN) -> PolicyEvent:
        return PolicyEvent(POLICY_EVENT_TYPE, sender, self.now(), policy.to_state())

    async def set_policy(self, policy: Policy, room: str = ROOM) -> IngestResult:
        return await self.ingest(self.policy_event(policy), room=room)

    async def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        await self.settle()

    async def settle(self, timeout: float = 5) -> None:
        """Wait until the scheduler sleeps with nothing due and no worker runs."""
        assert self.engine is not None
        scheduler = self.engine._scheduler

        def idle() -> bool:
            task = scheduler._loop_task
            if task is not None and task.done():
                task.result()  # re-raise whatever killed the loop
                raise AssertionError("scheduler loop stopped")
            armer = self.engine._armer if self.engine is not None else None
            # Workers are done once they wrote their outcome down, not when their
            # request ended; the loops, once they sleep on the clock again (with two
            # of them, one can be working while the other sleeps).
            loops = [t for t in (task, armer and armer._task) if t is not None and not t.done()]
            return (scheduler.in_flight == 0 and not scheduler._workers
                    and self.clock.idle() and all(self.clock.sleeping(t) for t in loops))

        await eventually(idle, timeout, "scheduler idle")

    # --- looking -----------------------------------------------------------

    async def event(self, event_id: str) -> dict[str, Any] | None:
        async with self.store.conn.execute(
            "SELECT * FROM events WHERE event_id = ?", (event_id,)
        ) as cur:
            row = await cur.fetchone()
            if row is None:
                return None
            return dict(zip([c[0] for c in cur.description], row, strict=True))

    async def event_ids(self) -> set[str]:
        async with self.store.conn.execute("SELECT event_id FROM events") as cur:
            return {row[0] for row in await cur.fetchall()}

    async def room_row(self, room: str = ROOM) -> dict[str, Any]:
        async with self.store.conn.execute("SELECT * FROM rooms WHERE room_id = ?", (room,)) as cur:
            row = await cur.fetchone()
            assert row is not None, f"no room {room}"
            return dict(zip([c[0] for c in cur.description], row, strict=True))

    def sync_db(self) -> Any:
        """A second, independent connection: sees only what is committed. sqlite3's API
        (``with db:`` commits) on either backend; SQL in the store's dialect."""
        if self.path is not None:
            return sqlite3.connect(self.path)
        return PgSyncDb(self.database)


class PgSyncDb:
    """sqlite3's connection API over psycopg2, for ``Harness.sync_db`` on PostgreSQL."""

    def __init__(self, database: Database) -> None:
        import psycopg2

        parts = urlsplit(database.url)
        schema = dict(parse_qsl(parts.query)).get("search_path")
        self._conn = psycopg2.connect(
            parts._replace(query="").geturl(),
            options=f"-c search_path={schema}" if schema else None)

    def execute(self, sql: str, params: Any = ()) -> Any:
        text = re.sub(r"\$\d+\b", "%s", translate(sql).sql.replace("%", "%%"))
        values = [int(v) if isinstance(v, int) else v for v in params]
        cur = self._conn.cursor()
        cur.execute(text, values or None)
        return cur

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgSyncDb:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self._conn.commit()
        else:
            self._conn.rollback()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "lethe.db"


@pytest.fixture
async def make_harness(make_database):
    """Factory: ``await make_harness(clock=..., transport=..., config=..., path=...)``,
    on the test's backend (``path``: another store; the same path, the same store)."""
    made: list[Harness] = []

    async def make(path: Path | None = None, **kwargs: Any) -> Harness:
        harness = Harness(make_database(path), **kwargs)
        made.append(harness)
        return await harness.start()

    yield make
    for harness in reversed(made):
        await harness.close()


@pytest.fixture
async def h(make_harness) -> Harness:
    return await make_harness()
