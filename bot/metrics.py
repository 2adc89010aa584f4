"""Prometheus metrics and a health check for `lethe run` (``metrics.listen``).

Counters come from what the engine counts already (``RedactionStats``) and from
the front (tracked events); gauges are read from the database when scraped; the
lag histogram is fed by the scheduler's redaction hook. The engine itself never
imports prometheus. The server runs in the bot's event loop and is owned by it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bot.config import ConfigError, MetricsConfig
from bot.engine.delayed import DelayedStatus, Why
from bot.engine.engine import Engine
from bot.engine.model import STATUS_NAMES, DueEvent, MediaCounts, counts_by_name

log = logging.getLogger(__name__)

# Due -> verified. Seconds when all is well, hours when the bot had no power.
LAG_BUCKETS_S = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


class Front(Protocol):
    """What the metrics read from a running front (the bot)."""

    @property
    def engine(self) -> Engine | None: ...

    @property
    def tracked_total(self) -> int: ...

    @property
    def sync_alive(self) -> bool: ...

    @property
    def scheduler_alive(self) -> bool: ...


class LetheMetrics:
    """One registry per front (not prometheus' global one), so several bots can
    live in one process, as they do in the tests."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self.registry = CollectorRegistry()
        self.lag = Histogram(
            "lethe_redaction_lag_seconds",
            "Time from an event's due time until its redaction was confirmed.",
            buckets=LAG_BUCKETS_S,
            registry=self.registry,
        )
        # Database readings, refreshed (asynchronously) just before each scrape.
        self._pending: dict[str, int] = {}
        self._rooms: dict[tuple[str, str], int] = {}
        self._media = MediaCounts()
        self._delayed: DelayedStatus | None = None
        self.registry.register(self)

    def observe_redaction(self, event: DueEvent, lag_ms: int) -> None:
        self.lag.observe(max(0, lag_ms) / 1000)

    async def refresh(self) -> None:
        engine = self._front.engine
        if engine is None:
            return
        self._pending = counts_by_name(await engine.pending_by_status())
        rooms: dict[tuple[str, str], int] = {}
        for row in await engine.rooms():
            key = (row.policy.mode.value, "yes" if row.can_redact_others else "no")
            rooms[key] = rooms.get(key, 0) + 1
        self._rooms = rooms
        if engine.deletes_media:
            self._media = await engine.media_counts()
        self._delayed = await engine.delayed_status()

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """Called by the registry on each scrape (prometheus' custom collector API)."""
        front = self._front
        yield CounterMetricFamily(
            "lethe_events_tracked", "Timeline events put on a retention schedule.",
            value=front.tracked_total,
        )
        # The label is "state" (an event's status) for the dashboards that use it.
        pending = GaugeMetricFamily(
            "lethe_pending_events", "Events scheduled for redaction, by state.",
            labels=["state"],
        )
        for status in STATUS_NAMES.values():
            pending.add_metric([status], self._pending.get(status, 0))
        yield pending
        engine = front.engine
        stats = engine.stats if engine is not None else None
        for name, doc, value in (
            ("lethe_redactions", "Redactions done and confirmed.", "done"),
            ("lethe_redactions_echoed",
             "Redactions confirmed by their echo in the event stream, without a fetch.",
             "echoed"),
            ("lethe_redaction_fetches", "Fetches of a redacted event to check it is empty.",
             "fetches"),
            ("lethe_rate_limited", "429 (rate limited) answers to redactions.", "rate_limited"),
            ("lethe_redaction_retries", "Redactions retried (429, errors, unconfirmed).",
             "retries"),
            ("lethe_redaction_failures", "Redactions given up on (never confirmed).",
             "failures"),
            ("lethe_redactions_parked", "Redactions put off for lack of power.", "parked"),
            ("lethe_delayed_redactions_scheduled",
             "Delayed redactions scheduled with the homeserver.", "delayed_armed"),
            ("lethe_delayed_redactions_fired",
             "Redactions the homeserver sent on time from a delayed redaction, confirmed.",
             "delayed_fired"),
            ("lethe_delayed_redactions_cancelled",
             "Delayed redactions cancelled (the message went another way, its deadline "
             "moved, or Lethe took over).", "delayed_cancelled"),
        ):
            yield CounterMetricFamily(
                name, doc, value=getattr(stats, value) if stats is not None else 0
            )
        # The label "enforceable" says whether the bot can_redact_others there.
        rooms = GaugeMetricFamily(
            "lethe_rooms", "Rooms by policy mode and whether the bot can enforce it.",
            labels=["policy", "enforceable"],
        )
        for (policy, can_redact_others), count in sorted(self._rooms.items()):
            rooms.add_metric([policy, can_redact_others], count)
        yield rooms
        yield from self._collect_media(engine)
        yield from self._delayed_gauges()
        for name, doc, alive in (
            ("lethe_sync_alive", "1 while the sync loop completes syncs.", front.sync_alive),
            ("lethe_scheduler_alive", "1 while the redaction scheduler runs.",
             front.scheduler_alive),
        ):
            yield GaugeMetricFamily(name, doc, value=int(alive))


    def _collect_media(self, engine: Engine | None) -> Iterator[Metric]:
        deletes = engine is not None and engine.deletes_media
        yield GaugeMetricFamily(
            "lethe_media_deletion",
            "1 when the files of expired messages are deleted (with a homeserver admin's "
            "token); 0 when they outlive their messages.", value=int(deletes))
        media = GaugeMetricFamily(
            "lethe_media_files",
            "Files of tracked messages: held (their message is there), due (waiting to be "
            "deleted), deleted, remote (on another server: not deletable from here).",
            labels=["state"])
        for state in ("held", "due", "deleted", "remote"):
            media.add_metric([state], getattr(self._media, state))
        yield media
        stats = engine.media_stats if engine is not None else None
        yield GaugeMetricFamily(
            "lethe_media_refused",
            "1 while the homeserver refuses the admin token (not an admin's, revoked).",
            value=int(stats is not None and stats.refused))

    def _delayed_gauges(self) -> Iterator[Metric]:
        """Whether delayed redactions are in use (1 on the label saying so or why not),
        and how many messages the homeserver holds one for."""
        delayed = self._delayed
        in_use = GaugeMetricFamily(
            "lethe_delayed_redactions_in_use",
            "1 on the state that holds: in_use, or why not (off_in_config, not_offered, "
            "not_checked, not_available).", labels=["state"])
        for why in Why:
            in_use.add_metric([why.value], int(delayed is not None and delayed.why is why))
        yield in_use
        yield GaugeMetricFamily(
            "lethe_delayed_redactions_armed",
            "Messages the homeserver holds a delayed redaction of now.",
            value=delayed.armed if delayed is not None else 0)


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /health (200 or 503, JSON)."""

    def __init__(self, config: MetricsConfig, front: Front, metrics: LetheMetrics,
                 role: Callable[[], str] = lambda: "active") -> None:
        self._config = config
        self._role = role  # "active", "standby" or "starting" (bot/lifecycle.py)
        self._front = front
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/health", self._serve_health)
        # Scrapes are cheap and retried: stopping must not wait aiohttp's default 60 s.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._config.host, self._config.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"{self._config.key} {self._config.listen}: cannot listen there: "
                f"{exc.strerror or exc}"
            ) from None
        self._runner = runner
        log.info("metrics on http://%s/metrics, health on /health", self._config.listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        body = await self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, request: web.Request) -> web.Response:
        health = {
            "sync_alive": self._front.sync_alive,
            "scheduler_alive": self._front.scheduler_alive,
        }
        ok = all(health.values())
        return web.json_response({**health, "role": self._role()}, status=200 if ok else 503)
