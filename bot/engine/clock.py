"""Time source for the engine: wall-clock milliseconds, and a way to sleep until a deadline.

The engine never calls ``time`` directly so unit tests can drive it with ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        """Return at ``deadline_ms`` or as soon as ``wake`` is set, whichever is first."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        delay = (deadline_ms - self.now_ms()) / 1000
        if delay <= 0:
            return
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes in
        # the same turn as ``wake`` (a worker ending as the scheduler stops), and the
        # cancelled loop would run on while ``stop`` waits for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await wake.wait()


class FakeClock:
    """A clock that only moves when told to; sleepers wake when it passes their deadline."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._moved = asyncio.Event()

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms
        self._moved.set()

    async def sleep_until(self, deadline_ms: int, wake: asyncio.Event) -> None:
        while self._now < deadline_ms and not wake.is_set():
            self._moved.clear()
            moved = asyncio.ensure_future(self._moved.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                woken.cancel()
