"""Sync pacing: while due redactions queue for workers (the scheduler's side is in
test_redactor.py), the bot syncs less often, as long as its busiest room's news
stays well inside the timeline limit."""

from __future__ import annotations

import asyncio
from typing import Any

from nio import SyncResponse

from bot.front.pace import (
    FIRST_BACKLOG_INTERVAL_S,
    MAX_BACKLOG_INTERVAL_S,
    MIN_INTERVAL_S,
    SyncNews,
    SyncPace,
)

from .conftest import ALICE


def _sync(**rooms: tuple[int, bool]) -> SyncResponse:
    """A sync response with, per room, that many timeline events and that limited flag."""
    def event(i: int) -> dict[str, Any]:
        return {"type": "m.room.message", "event_id": f"$e{i}", "sender": ALICE,
                "origin_server_ts": i, "content": {"msgtype": "m.text", "body": "-"}}

    join = {f"!{name}:x": {"timeline": {"events": [event(i) for i in range(count)],
                                        "limited": limited, "prev_batch": "p"}}
            for name, (count, limited) in rooms.items()}
    resp = SyncResponse.from_dict({"next_batch": "s1", "rooms": {"join": join}})
    assert isinstance(resp, SyncResponse), resp
    return resp


def test_news_is_the_busiest_room_and_any_limit() -> None:
    assert SyncNews.of(_sync(a=(3, False), b=(7, False))) == SyncNews(7, False)
    assert SyncNews.of(_sync(a=(3, True), b=(7, False))) == SyncNews(7, True)
    assert SyncNews.of(_sync()) == SyncNews(0, False)


def test_quiet_backlogged_syncs_stretch_the_interval_up_to_its_cap() -> None:
    pace = SyncPace(timeline_limit=100)
    assert pace.backlog_interval_s == FIRST_BACKLOG_INTERVAL_S
    seen = []
    for _ in range(6):
        pace.observe(SyncNews(busiest=5, limited=False), backlogged=True)
        seen.append(pace.backlog_interval_s)
    assert seen == [2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert MAX_BACKLOG_INTERVAL_S == 4.0


def test_busy_or_limited_syncs_shrink_it_down_to_the_minimum() -> None:
    pace = SyncPace(timeline_limit=100)
    pace.observe(SyncNews(busiest=51, limited=False), backlogged=True)
    assert pace.backlog_interval_s == 0.5
    pace.observe(SyncNews(busiest=1, limited=True), backlogged=True)
    assert pace.backlog_interval_s == MIN_INTERVAL_S
    pace.observe(SyncNews(busiest=100, limited=True), backlogged=True)
    assert pace.backlog_interval_s == MIN_INTERVAL_S


def test_news_between_the_marks_keeps_it() -> None:
    pace = SyncPace(timeline_limit=100)
    for busiest in (25, 40, 50):
        pace.observe(SyncNews(busiest=busiest, limited=False), backlogged=True)
        assert pace.backlog_interval_s == FIRST_BACKLOG_INTERVAL_S, busiest


def test_syncs_outside_a_backlog_teach_nothing() -> None:
    pace = SyncPace(timeline_limit=100)
    pace.observe(SyncNews(busiest=0, limited=False), backlogged=False)
    pace.observe(SyncNews(busiest=100, limited=True), backlogged=False)
    assert pace.backlog_interval_s == FIRST_BACKLOG_INTERVAL_S


async def test_a_backlogged_turn_waits_for_the_backlog_to_end_or_the_interval() -> None:
    pace = SyncPace(timeline_limit=100)
    loop = asyncio.get_running_loop()
    over = asyncio.Event()
    asked: list[bool] = []

    async def backlog_over() -> None:
        asked.append(True)
        await over.wait()

    start = loop.time()
    turn = asyncio.create_task(pace.wait_turn(start, True, backlog_over))
    await asyncio.sleep(MIN_INTERVAL_S + 0.1)
    assert asked and not turn.done()  # past the minimum, still in the backlog
    over.set()
    await asyncio.wait_for(turn, 1)  # the backlog ending ends the turn, not the interval
    assert loop.time() - start < FIRST_BACKLOG_INTERVAL_S

    start = loop.time()
    await asyncio.wait_for(pace.wait_turn(start, True, asyncio.Event().wait), 5)
    assert loop.time() - start >= FIRST_BACKLOG_INTERVAL_S - 0.01  # never over: the cap


async def test_without_a_backlog_a_turn_is_the_minimum_interval() -> None:
    pace = SyncPace(timeline_limit=100)
    loop = asyncio.get_running_loop()

    async def never_asked() -> None:
        raise AssertionError("not backlogged: nothing to wait for")

    start = loop.time()
    await asyncio.wait_for(pace.wait_turn(start, False, never_asked), 1)
    assert MIN_INTERVAL_S - 0.01 <= loop.time() - start < FIRST_BACKLOG_INTERVAL_S
