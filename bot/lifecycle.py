"""The lifecycle both fronts (the nio bot and the bridge) share, written once: the run
lock, the engine opened and started, the metrics server, and the background tasks
they own, all stopped in order on the way out.

On PostgreSQL a front first ``lead``s: it waits as the standby until it holds the
database's lock (bot/engine/store/leader.py), and its run ends if that is lost for
good (another process led while its connection was away).
Then it takes the run lock (before anything touches its database or key store),
opens the engine, starts the metrics, hands its own loops to ``own``, and runs
until the stop event (SIGINT or SIGTERM, see `lethe run`) is set or one of those
loops fails for good. ``stop`` stops the metrics, cancels every owned task and
closes the engine; the front then closes its own connections and ``release``s the
lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bot.config import MetricsConfig
from bot.engine.engine import Engine, EngineConfig
from bot.engine.media import MediaTransport
from bot.engine.redactor import Transport
from bot.engine.store import Database, Leader, NotLeader, PgStore, StoreBackend, open_store
from bot.metrics import Front, LetheMetrics, MetricsServer
from bot.runlock import RunLock, hold

log = logging.getLogger(__name__)

STANDBY_RETRY_S = 1.0  # how often a standby tries the lock: one cheap connection


class FrontLife:
    def __init__(self) -> None:
        self._lock: RunLock | None = None
        self._engine: Engine | None = None
        self._metrics_server: MetricsServer | None = None
        self._metrics: LetheMetrics | None = None
        self._store: StoreBackend | None = None  # opened by ``lead``, for the engine
        # What /health says: "active", or (PostgreSQL) "standby" while another process
        # holds the lock, "starting" between the two.
        self.role = "starting"
        self._tasks: list[asyncio.Task[None]] = []

    def hold(self, path: Path, what: str) -> None:
        """One process per database (raises AlreadyRunning): see bot/runlock.py."""
        self._lock = hold(path, what)

    async def lead(self, database: Database, role: str, metrics: MetricsConfig | None,
                   front: Front) -> None:
        """On PostgreSQL, wait as the standby until this process holds the ``role``'s
        lock on the database (bot/engine/store/leader.py), serving /health (standby)
        meanwhile; from then on, the run ends the moment the lock is lost. A front calls
        this first, before anything else touches its database or files. On SQLite it
        does nothing: the file's run lock (``hold``) keeps to one process."""
        if database.is_sqlite:
            return
        self.role = "standby"
        await self._start_metrics_server(metrics, front)
        leader = Leader(role)
        announced = False
        while True:
            try:
                self._store = await open_store(database, on_connect=leader.on_connect)
                break
            except NotLeader as exc:
                if not announced:
                    log.info("standby: %s; taking over when it goes", exc)
                    announced = True
                await asyncio.sleep(STANDBY_RETRY_S)
        await leader.begin(self._store)
        self.role = "starting"
        log.info("active: this process holds the %s lock on %s", role, database)
        reconnect = self._store.conn.reconnect if isinstance(self._store, PgStore) else None
        self.own(leader.watch(reconnect), name="lethe-leader")

    async def open_engine(
        self,
        database: Database,
        transport: Transport,
        config: EngineConfig,
        on_park: Callable[[str, str], Awaitable[None]],
        is_other_sender: Callable[[str], bool] | None = None,
        media: MediaTransport | None = None,
    ) -> Engine:
        """The engine on the front's database (the store ``lead`` opened, if it did),
        started. ``is_other_sender`` says whose events need the permission to redact
        others' messages (default: all but the bot's own); ``media`` deletes the files
        of expired messages (with ``config.delete_media``)."""
        if self._store is not None:
            store, self._store = self._store, None
            engine = Engine(store, transport, config, on_park=on_park,
                            is_other_sender=is_other_sender, media=media)
        else:
            engine = await Engine.open(database, transport, config, on_park=on_park,
                                       is_other_sender=is_other_sender, media=media)
        self._engine = engine  # before start: ``stop`` closes it even if start fails
        await engine.start()
        self.role = "active"
        return engine

    async def start_metrics(self, config: MetricsConfig | None, front: Front) -> None:
        if config is None or self._engine is None:
            return
        await self._start_metrics_server(config, front)
        assert self._metrics is not None
        self._engine.observe_redactions(self._metrics.observe_redaction)

    async def _start_metrics_server(self, config: MetricsConfig | None, front: Front) -> None:
        if config is None or self._metrics_server is not None:
            return
        self._metrics = LetheMetrics(front)
        self._metrics_server = MetricsServer(config, front, self._metrics,
                                             role=lambda: self.role)
        await self._metrics_server.start()

    def own(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a background task that ``stop`` cancels; its failure ends ``run_until``."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def run_until(self, start: Callable[[], Awaitable[None]],
                        stop: Callable[[], Awaitable[None]], stop_event: asyncio.Event) -> None:
        """``start`` the front, run until ``stop_event`` is set or an owned task fails
        for good (its error is raised), and ``stop`` it whatever happened."""
        try:
            # A standby waits in ``start``: a stop must end that wait too.
            starting: asyncio.Future[None] = asyncio.ensure_future(start())
            stopper: asyncio.Future[Any] = asyncio.ensure_future(stop_event.wait())
            try:
                await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not starting.done():  # stopped, or this run itself cancelled
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
            if starting.cancelled() and stop_event.is_set():
                return
            starting.result()
            await self._wait(stop_event)
        finally:
            await stop()

    async def _wait(self, stop_event: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop_event.wait())
        try:
            while not stopper.done():
                for task in [t for t in self._tasks if t.done()]:
                    self._tasks.remove(task)  # a task that ended by itself is not waited on
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

    async def stop(self) -> None:
        """Stop the metrics, cancel every owned task, close the engine."""
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
            self._metrics = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
        if self._store is not None:  # led, stopped before the engine was made
            await self._store.close()
            self._store = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
