"""Faults, against real Synapses: the bot killed while redacting, the homeserver down
while events come due, Synapse's default rate limits, and the bot demoted while
events are pending. Nothing is lost and nothing is redacted twice.

The crash and rate-limit tests send plain ``m.room.message`` events with raw
``PUT /send`` into unencrypted rooms, for speed (hundreds of events); redacting an
encrypted event is the same API call, and the outage and demotion tests use
encrypted rooms. Tests that stop the homeserver or need its default rate limits get
a Synapse of their own; the session's is never stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from bot.config import Config
from bot.devtools.localsynapse import LocalSynapse
from bot.engine.model import EventStatus
from tests.harness import (
    BotHandle,
    LetheProcess,
    Person,
    bot_room,
    eventually,
    stays,
    unique,
    write_bot_config,
)
from tests.test_restart_privacy import credentials, shown_by_cli

REASON = "expired"
LAG_LINE = re.compile(r"redacted (\S+) in (\S+), ([0-9.]+) s after its due time")


# --- helpers ---------------------------------------------------------------------------


async def people_on(hs: LocalSynapse, directory: Path, stack: AsyncExitStack,
                    ) -> Callable[[str], Awaitable[Person]]:
    """Like the ``people`` fixture, for a homeserver of the test's own."""

    async def make(name: str) -> Person:
        person = Person(hs, unique(name), directory / "people" / name)
        await person.start()
        stack.push_async_callback(person.close)
        return person

    return make


async def plain_room(alice: Person, bot: str, timer_ms: int) -> str:
    """An unencrypted room where the bot is moderator and the policy is after-send
    ``timer_ms``, set straight in room state."""
    room = await alice.create_room([bot], encrypted=False, power={bot: 50})
    await alice.wait_notice(room, "Lethe is here", timeout=60)
    assert await alice.put_state(room, "chat.lethe.policy",
                                 {"mode": "after_send", "timer_ms": timer_ms}) == 200
    await alice.wait_notice(room, "changed the retention policy: after-send")
    return room


async def send_raw(person: Person, room: str, count: int) -> list[str]:
    """``count`` plain messages through the raw API, in order; returns their ids."""
    ids = []
    for i in range(count):
        status, data = await person.api(
            "PUT", f"/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}",
            {"msgtype": "m.text", "body": f"fault test message {i}"})
        assert status == 200, data
        ids.append(data["event_id"])
    return ids


async def redactions(person: Person, room: str) -> dict[str, list[dict[str, Any]]]:
    """Every ``m.room.redaction`` in the room, by the event it redacts (``redacts`` at
    the top level before room v11, in ``content`` from v11)."""
    found: dict[str, list[dict[str, Any]]] = {}
    token: str | None = None
    params = {"dir": "b", "limit": "500", "filter": '{"types": ["m.room.redaction"]}'}
    while True:
        status, page = await person.api("GET", f"/rooms/{quote(room)}/messages",
                                        params={**params, **({"from": token} if token else {})})
        assert status == 200, page
        for event in page.get("chunk", []):
            target = event.get("redacts") or event.get("content", {}).get("redacts")
            found.setdefault(target, []).append(event)
        token = page.get("end")
        if not page.get("chunk") or token is None:
            return found


async def count_redacted(person: Person, room: str, targets: list[str]) -> int:
    seen = await redactions(person, room)
    return sum(1 for t in targets if t in seen)


async def all_redacted(person: Person, room: str, targets: list[str]) -> bool:
    return await count_redacted(person, room, targets) == len(targets)


async def exempt_from_rate_limits(hs: LocalSynapse, admin_token: str, user_id: str) -> None:
    """Synapse's admin API: no rc_message limit for ``user_id``."""
    url = f"{hs.base_url}/_synapse/admin/v1/users/{quote(user_id)}/override_ratelimit"
    async with aiohttp.ClientSession() as session, session.post(
        url, json={"messages_per_second": 0, "burst_count": 0},
        headers={"Authorization": f"Bearer {admin_token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


def assert_no_secrets(text: str, config: Config) -> None:
    assert credentials(config)["access_token"] not in text
    assert config.e2ee.pickle_key not in text
    assert config.bot.password is not None and config.bot.password not in text


def lag_lines(text: str, room: str) -> dict[str, float]:
    return {m.group(1): float(m.group(3)) for m in LAG_LINE.finditer(text) if m.group(2) == room}


# --- 1. crash: SIGKILL while redacting ---------------------------------------------------

CRASH_EVENTS = 200


async def test_sigkill_while_redacting_loses_nothing_and_redacts_nothing_twice(
    people, synapse, tmp_path
) -> None:
    # Two workers, so the 200 redactions take long enough to be interrupted midway.
    config = write_bot_config(synapse, tmp_path / "bot", redaction={"workers": 2})
    alice = await people("alice")
    setup = BotHandle(config)
    await setup.start()
    try:
        room = await plain_room(alice, config.bot.user_id, 1000)
        assert setup.bot is not None and setup.bot.engine is not None
        engine = setup.bot.engine
        await eventually(lambda: _policy_stored(engine, room), 30, what="policy persisted")
    finally:
        await setup.stop()

    # 200 messages while the bot is away: all are due when it comes back.
    targets = await send_raw(alice, room, CRASH_EVENTS)
    wanted = set(targets)
    log_path = tmp_path / "lethe-run.log"
    first = LetheProcess(["-c", str(config.path), "run"], log_path)
    await first.start()
    try:
        def done_in_log() -> int:
            return len(wanted & set(lag_lines(first.output(), room)))

        await eventually(lambda: done_in_log() >= 40, 90, interval=0.05,
                         what="the bot redacting (40 done)")
        assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        await first.close()
    # Killed midway: some redacted, not all, and some redactions were in flight.
    partial = await count_redacted(alice, room, targets)
    assert 0 < partial < CRASH_EVENTS, partial
    with sqlite3.connect(config.database.path) as db:
        # Sent but not yet confirmed: in a worker's hands, or waiting for its echo.
        in_flight = db.execute("SELECT count(*) FROM events WHERE status IN (?, ?) AND "
                               "txn_id IS NOT NULL",
                               (EventStatus.IN_FLIGHT, EventStatus.SENT)).fetchone()[0]
    assert in_flight >= 1, "the kill did not land while a redaction was in flight"

    second = LetheProcess(["-c", str(config.path), "run"], log_path)
    await second.start()
    try:
        await eventually(lambda: all_redacted(alice, room, targets), 120, interval=0.5,
                         what=f"all {CRASH_EVENTS} redacted after the restart")
        await eventually(lambda: _rows_left(config.database.path, targets) == 0, 60, interval=0.5,
                         what="every redaction confirmed (its echo seen, or fetched)")
        # Clean stop, so no redaction can still be on its way when we count.
        assert await second.signal(signal.SIGTERM) == 0, second.output()[-2000:]
    finally:
        await second.close()

    seen = await redactions(alice, room)
    twice = {t: len(seen.get(t, [])) for t in targets if len(seen.get(t, [])) != 1}
    assert twice == {}, f"not redacted exactly once: {twice}"
    for target in targets:
        (event,) = seen[target]
        assert event["sender"] == config.bot.user_id
        assert event["content"].get("reason") == REASON, event["content"]
    # What a redaction leaves: the event's id, type, sender and time, no content.
    pruned = await alice.event(room, targets[0])
    assert pruned["content"] == {}
    assert (pruned["event_id"], pruned["type"], pruned["sender"]) == (
        targets[0], "m.room.message", alice.user_id)
    assert isinstance(pruned["origin_server_ts"], int)
    assert _rows_left(config.database.path, targets) == 0, "confirmed redactions leave no rows"
    output = log_path.read_text()  # both runs, at DEBUG
    assert "Traceback" not in output
    assert_no_secrets(output, config)


def _rows_left(db_path: Path, event_ids: list[str]) -> int:
    """Rows the bot still keeps for these events (read while it runs: WAL allows it)."""
    with sqlite3.connect(db_path) as db:
        left = db.execute(f"SELECT count(*) FROM events WHERE event_id IN "
                          f"({','.join('?' * len(event_ids))})", event_ids).fetchone()[0]
    db.close()
    return int(left)


async def _policy_stored(engine: Any, room: str) -> bool:
    row = await engine.room(room)
    return row is not None and row.policy.active


# --- 2. homeserver outage ------------------------------------------------------------

OUTAGE_S = 20
OUTAGE_EVENTS = 10


@pytest.fixture(scope="module")
def outage_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    hs = LocalSynapse(tmp_path_factory.mktemp("outage-synapse"))
    hs.start()
    yield hs
    hs.stop()


async def test_homeserver_outage_delays_but_loses_nothing(outage_hs, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    config = write_bot_config(outage_hs, tmp_path / "bot")
    handle = BotHandle(config)
    async with AsyncExitStack() as stack:
        people = await people_on(outage_hs, tmp_path, stack)
        stack.push_async_callback(handle.stop)
        alice, _, room = await bot_room(people, handle, policy="after-send 5s")
        assert handle.task is not None
        sent = [await alice.send(room, f"outage message {i}") for i in range(OUTAGE_EVENTS)]
        assert handle.bot is not None
        engine = handle.bot.engine

        async def tracked() -> bool:
            return await engine.tracked(sent) == set(sent)

        # Tracked before the homeserver goes away, so everything comes due while it is down.
        await eventually(tracked, 15, what="the bot tracking the messages")
        outage_hs.stop()
        down_at = time.monotonic()
        try:
            for _ in range(OUTAGE_S):
                await asyncio.sleep(1)
                assert not handle.task.done(), "the bot exited during the outage"
        finally:
            outage_hs.start()
        back_at = time.monotonic()

        # Retries back off to at most 60 s; the sync loop to 30 s.
        await eventually(lambda: all_redacted(alice, room, sent), 120, interval=1,
                         what="every event redacted after the outage")
        assert not handle.task.done()

    logged = "\n".join(r.getMessage() for r in caplog.records)
    lags = lag_lines(logged, room)
    assert set(sent) <= set(lags), "a redaction without its lag in the log"
    # Each event was due about 5 s after the homeserver went away and could not be
    # redacted before it was back: the logged lag says so.
    least = back_at - down_at - 5 - 2
    assert all(lags[e] >= least for e in sent), (least, {e: lags[e] for e in sent})
    assert "homeserver is back after" in logged
    assert "will retry" in logged, "retries during the outage were not logged"
    shown = "\n".join(r.getMessage() for r in caplog.records if shown_by_cli(r))
    assert "Traceback" not in shown
    assert_no_secrets(shown, config)


# --- 3. rate limits at Synapse's defaults ---------------------------------------------

RATE_EVENTS = 60


@pytest.fixture(scope="module")
def limited_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    hs = LocalSynapse(tmp_path_factory.mktemp("limited-synapse"), rate_limited=True)
    hs.start()
    yield hs
    hs.stop()


ACCESS_LINE = re.compile(
    r"\{(?P<user>@[^}]+)\} Processed request: .*? (?P<status>\d{3}) "
    r'"PUT /_matrix/client/v3/rooms/(?P<room>[^/]+)/redact/(?P<event>[^/]+)/')


async def test_default_rate_limits_are_honoured(limited_hs, tmp_path, caplog) -> None:
    """rc_message at 0.2/s, burst 10 for the bot (the test's own sender is exempt):
    60 events due at once all go, at the pace the server allows."""
    caplog.set_level(logging.INFO, logger="bot")
    config = write_bot_config(limited_hs, tmp_path / "bot")
    admin = limited_hs.register(unique("root"), admin=True)
    handle = BotHandle(config)
    async with AsyncExitStack() as stack:
        people = await people_on(limited_hs, tmp_path, stack)
        alice = await people("alice")
        await exempt_from_rate_limits(limited_hs, admin.access_token, alice.user_id)
        stack.push_async_callback(handle.stop)
        await handle.start()
        room = await plain_room(alice, config.bot.user_id, 5000)
        started = time.monotonic()
        targets = await send_raw(alice, room, RATE_EVENTS)
        # 10 at once, then one per 5 s: over four minutes.
        await eventually(lambda: all_redacted(alice, room, targets), 600, interval=5,
                         what=f"all {RATE_EVENTS} redacted")
        took = time.monotonic() - started
        seen = await redactions(alice, room)
        assert all(len(seen[t]) == 1 for t in targets)
        await handle.stop()

    requests = [m.groupdict() for m in ACCESS_LINE.finditer(limited_hs.log_path.read_text())
                if m.group("user") == config.bot.user_id]
    room_q = quote(room, safe="")
    ours = [r for r in requests if r["room"] in (room, room_q)]
    by_status: dict[str, int] = {}
    for request in ours:
        by_status[request["status"]] = by_status.get(request["status"], 0) + 1
    limited, accepted = by_status.get("429", 0), by_status.get("200", 0)
    assert set(by_status) <= {"200", "429"}, by_status
    assert limited > 0, "the test never hit the rate limit"
    # The bot saw every 429 the server sent (nothing retried behind its back) ...
    retries = [r.getMessage() for r in caplog.records if "rate limited" in r.getMessage()
               and "will retry" in r.getMessage()]
    assert len(retries) == limited, (len(retries), limited)
    # ... and honoured them: after a 429 the bot waits retry_after_ms and then sends one
    # at a time, earning about one 429 per accepted redaction (60 for 61 when measured).
    # Releasing every worker after each pause gave some 400 here; ignoring
    # retry_after_ms would give thousands.
    assert limited <= 2 * accepted, (limited, accepted)
    print(f"\nrate limits: {RATE_EVENTS} due at once, {accepted} accepted redactions, "
          f"{limited} answered 429, all done in {took:.0f} s")


# --- 4. demoted while events are pending ---------------------------------------------


async def test_demoted_bot_keeps_the_schedule_and_resumes(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 5s")
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine
    sent = [await alice.send(room, f"pending while demoted {i}") for i in range(5)]
    await alice.set_power(room, lethe.user_id, 0)
    await alice.wait_notice(room, "I cannot redact other people's messages here")

    async def none_redacted() -> bool:
        return await count_redacted(alice, room, sent) == 0

    # Well past their due time, nothing is redacted and nothing is dropped.
    assert await stays(none_redacted, 7), "redacted without power"
    pending = {p.event_id: p for p in await engine._store.pending(room)}
    assert set(sent) <= set(pending), "an event was dropped from the schedule"
    assert all(pending[e].status != EventStatus.FAILED for e in sent)
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement: NO")
    assert "Pending:" in status, status

    await alice.set_power(room, lethe.user_id, 50)
    await alice.wait_notice(room, "I can redact messages here again")

    await eventually(lambda: all_redacted(alice, room, sent), 30,
                     what="everything kept while demoted redacted")

    async def confirmed() -> bool:  # once each redaction's echo is back in the bot's sync
        return not {p.event_id for p in await engine._store.pending(room)} & set(sent)

    await eventually(confirmed, 30, what="every redaction confirmed and off the schedule")
