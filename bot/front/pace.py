"""How often the bot syncs.

A sync costs the homeserver a few queries for every room with news (measured in
bench/bench_throughput.py: over 50 rooms, about a redaction's worth of database
time for every four rooms). Normally the bot syncs as soon as there is news, at
most every MIN_INTERVAL_S, for latency. While due redactions queue for workers,
though, every sync competes with them, and the rooms it reports mostly carry the
echoes of Lethe's own redactions, which may take up to ECHO_WAIT_MS to come. Then
the interval grows, so that each sync collects more echoes per room, for as long as
the busiest room's news stays well inside the sync's timeline limit (a room
overflowing it costs a /messages backfill).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nio import SyncResponse

MIN_INTERVAL_S = 0.25
# Well inside ECHO_WAIT_MS (10 s), leaving time for a slow sync under load.
MAX_BACKLOG_INTERVAL_S = 4.0
FIRST_BACKLOG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class SyncNews:
    """What one sync brought: the most timeline events of any joined room, and whether
    any room's timeline was cut short (limited)."""

    busiest: int
    limited: bool

    @classmethod
    def of(cls, resp: SyncResponse) -> SyncNews:
        timelines = [info.timeline for info in resp.rooms.join.values()]
        return cls(
            busiest=max((len(t.events) for t in timelines), default=0),
            limited=any(t.limited for t in timelines),
        )


class SyncPace:
    """The interval between sync starts while the scheduler is backlogged: doubled after
    a sync whose busiest room had under ``quiet`` events, halved after one over
    ``busy`` or limited, within [MIN_INTERVAL_S, MAX_BACKLOG_INTERVAL_S]."""

    def __init__(self, timeline_limit: int) -> None:
        self.busy = timeline_limit // 2
        self.quiet = timeline_limit // 4
        self.backlog_interval_s = FIRST_BACKLOG_INTERVAL_S

    async def wait_turn(self, last_start: float, backlogged: bool,
                        backlog_over: Callable[[], Awaitable[object]]) -> None:
        """Wait until the next sync may start (``last_start`` on the loop's clock): at
        least MIN_INTERVAL_S after the last one and, while ``backlogged``, up to the
        backlog interval unless ``backlog_over()`` returns first."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, last_start + MIN_INTERVAL_S - loop.time()))
        if backlogged:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(last_start + self.backlog_interval_s):
                    await backlog_over()

    def observe(self, news: SyncNews, *, backlogged: bool) -> None:
        """Learn only from syncs during a backlog: news otherwise says nothing about
        how its echoes batch."""
        if not backlogged:
            return
        if news.limited or news.busiest > self.busy:
            self.backlog_interval_s = max(MIN_INTERVAL_S, self.backlog_interval_s / 2)
        elif news.busiest < self.quiet:
            self.backlog_interval_s = min(MAX_BACKLOG_INTERVAL_S, self.backlog_interval_s * 2)
