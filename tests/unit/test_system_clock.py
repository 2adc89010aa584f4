"""The engine's wall clock (bot/engine/clock.py): a sleeper wakes at its deadline or
when told, and a cancelled sleeper always stops, even when it is woken in the same
turn. On Python 3.11, asyncio.wait_for lost that cancellation, and the scheduler's
stop waited forever for a loop that ran on."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.engine.clock import SystemClock


async def _sleeping(wake: asyncio.Event, in_ms: int) -> asyncio.Task[None]:
    clock = SystemClock()
    task = asyncio.create_task(clock.sleep_until(clock.now_ms() + in_ms, wake))
    for _ in range(3):  # let it begin to wait
        await asyncio.sleep(0)
    return task


@pytest.mark.parametrize("woken_first", [True, False])
async def test_a_sleeper_cancelled_as_it_is_woken_stops(woken_first: bool) -> None:
    wake = asyncio.Event()
    task = await _sleeping(wake, 60_000)
    if woken_first:
        wake.set()
        task.cancel()
    else:
        task.cancel()
        wake.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_sleeper_wakes_when_told_or_at_its_deadline() -> None:
    wake = asyncio.Event()
    task = await _sleeping(wake, 60_000)
    wake.set()
    await asyncio.wait_for(task, 1)
    started = time.monotonic()
    await asyncio.wait_for(await _sleeping(asyncio.Event(), 50), 1)
    assert time.monotonic() - started >= 0.04
