"""The lifecycle both fronts (the nio bot and the bridge) share, written once: the run
lock, the engine opened and started, the metrics server, and the background tasks
they own, all stopped in order on the way out.

A front takes the lock first (before anything touches its database or key store),
opens the engine, starts the metrics, hands its own loops to ``own``, and runs
until the stop event (SIGINT or SIGTERM, see `lethe run`) is set or one of those
loops fails for good. ``stop`` stops the metrics, cancels every owned task and
closes the engine; the front then closes its own connections and ``release``s the
lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bot.config import MetricsConfig
from bot.engine.engine import Engine, EngineConfig
from bot.engine.media import MediaTransport
from bot.engine.redactor import Transport
from bot.engine.store import Database
from bot.metrics import Front, LetheMetrics, MetricsServer
from bot.runlock import RunLock, hold


class FrontLife:
    def __init__(self) -> None:
        self._lock: RunLock | None = None
        self._engine: Engine | None = None
        self._metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def hold(self, path: Path, what: str) -> None:
        """One process per database (raises AlreadyRunning): see bot/runlock.py."""
        self._lock = hold(path, what)

    async def open_engine(
        self,
        database: Database,
        transport: Transport,
        config: EngineConfig,
        on_park: Callable[[str, str], Awaitable[None]],
        is_other_sender: Callable[[str], bool] | None = None,
        media: MediaTransport | None = None,
    ) -> Engine:
        """The engine on the front's database, started. ``is_other_sender`` says whose
        events need the permission to redact others' messages (default: all but the
        bot's own); ``media`` deletes the files of expired messages (with
        ``config.delete_media``)."""
        engine = await Engine.open(database, transport, config, on_park=on_park,
                                   is_other_sender=is_other_sender, media=media)
        self._engine = engine  # before start: ``stop`` closes it even if start fails
        await engine.start()
        return engine

    async def start_metrics(self, config: MetricsConfig | None, front: Front) -> None:
        if config is None or self._engine is None:
            return
        metrics = LetheMetrics(front)
        self._engine.observe_redactions(metrics.observe_redaction)
        self._metrics_server = MetricsServer(config, front, metrics)
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
            await start()
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
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
