"""What the engine does with each answer of the homeserver."""

from __future__ import annotations

import asyncio

from bot.engine.engine import EngineConfig
from bot.engine.model import DueEvent, EventStatus, Message
from bot.engine.policy import Policy
from bot.engine.redactor import CALM_AFTER, MAX_BACKOFF_MS, Outcome, Reply, backoff_ms

from .conftest import ALICE, BOB, BOT, ROOM, Harness, eventually

M = 60_000


async def _one_due(h: Harness, event_id: str = "$m1", sender: str = ALICE) -> int:
    """Track one message under after_send 1m and return its due time."""
    await h.set_policy(Policy.after_send(M))
    sent = h.now()
    await h.ingest(Message(event_id, sender, sent))
    return sent + M


def test_backoff_doubles_up_to_a_limit() -> None:
    assert [backoff_ms(n) for n in range(5)] == [1000, 1000, 2000, 4000, 8000]
    assert backoff_ms(50) == MAX_BACKOFF_MS


async def test_rate_limited_waits_retry_after(h: Harness) -> None:
    h.transport.script_redact("$m1", Reply(Outcome.RATE_LIMITED, retry_after_ms=5_000))
    await h.set_policy(Policy.after_send(M))
    t = h.now() - 1_000  # both sent by now
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", BOB, t + 1_000))
    await h.advance(M - 1_000)
    assert h.transport.redacted_ids() == ["$m1"]
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.WAITING
    assert row["due_at"] == h.now() + 5_000

    # $m2 falls due during the pause: nothing is sent before retry_after.
    await h.advance(4_999)
    assert h.transport.redacted_ids() == ["$m1"]
    await h.advance(1)
    assert sorted(h.transport.redacted_ids()[1:]) == ["$m1", "$m2"]
    assert await h.event_ids() == set()
    assert h.engine is not None and h.engine.stats.rate_limited == 1
    # The retry reused the transaction id of the first attempt.
    txns = {call[3] for call in h.transport.redact_calls if call[1] == "$m1"}
    assert len(txns) == 1


async def test_transient_error_backs_off_and_retries(h: Harness) -> None:
    h.transport.script_redact(
        "$m1", Reply(Outcome.TRANSIENT, detail="502"), Reply(Outcome.TRANSIENT, detail="timeout")
    )
    await _one_due(h)
    await h.advance(M)
    assert len(h.transport.redact_calls) == 1
    await h.advance(backoff_ms(1) - 1)
    assert len(h.transport.redact_calls) == 1
    await h.advance(1)
    assert len(h.transport.redact_calls) == 2
    await h.advance(backoff_ms(2) - 1)
    assert len(h.transport.redact_calls) == 2
    await h.advance(1)
    assert h.transport.redacted_ids() == ["$m1"] * 3
    assert await h.event("$m1") is None
    assert len({call[3] for call in h.transport.redact_calls}) == 1, "one txn id for all tries"
    # Before each retry it looked whether the earlier try had worked after all.
    assert h.transport.check_calls.count((ROOM, "$m1", ALICE)) >= 3


async def test_lag_counts_from_the_deadline_not_the_last_retry(h: Harness) -> None:
    """Retries move an event's due time on; the lag reported (log, metrics) must still
    say how late the redaction was against the policy."""
    h.transport.script_redact("$m1", *[Reply(Outcome.TRANSIENT, detail="down")] * 3)
    due = await _one_due(h)
    await h.advance(M)
    for attempt in (1, 2, 3):
        await h.advance(backoff_ms(attempt))
    assert await h.event("$m1") is None
    assert h.engine is not None
    assert h.engine._scheduler.last_lag_ms == h.now() - due == sum(backoff_ms(n) for n in (1, 2, 3))


async def test_forbidden_parks_until_power_returns(h: Harness) -> None:
    assert h.engine is not None
    h.transport.script_redact("$m1", Reply(Outcome.FORBIDDEN, detail="M_FORBIDDEN"))
    await h.set_policy(Policy.after_send(M))
    t = h.now() - 2  # all sent by now
    await h.ingest(
        Message("$m1", ALICE, t), Message("$m2", BOB, t + 1), Message("$own", BOT, t + 2)
    )
    await h.advance(M - 2)
    assert h.transport.redacted_ids() == ["$m1"]
    await h.advance(10)
    # $m1 parked; $m2 parked without trying (no power in this room); the bot's own
    # message does not need power and goes.
    assert (await h.event("$m1"))["status"] == EventStatus.PARKED
    assert (await h.event("$m2"))["status"] == EventStatus.PARKED
    assert await h.event("$own") is None
    assert h.transport.redacted_ids() == ["$m1", "$own"]
    room = await h.engine.room(ROOM)
    assert room is not None and not room.can_redact_others
    assert h.engine.stats.parked == 2

    await h.advance(24 * 3600 * 1000)
    assert h.transport.redacted_ids() == ["$m1", "$own"], "parked events wait for power"

    assert await h.engine.set_power(ROOM, True, 100, 50)
    await h.settle()
    assert sorted(h.transport.redacted_ids()[2:]) == ["$m1", "$m2"]
    assert await h.event_ids() == set()
    room = await h.engine.room(ROOM)
    assert room is not None and (room.can_redact_others, room.bot_level, room.redact_level) == (
        True,
        100,
        50,
    )


async def test_forbidden_on_own_event_retries(h: Harness) -> None:
    h.transport.script_redact("$own", Reply(Outcome.FORBIDDEN))
    await _one_due(h, "$own", BOT)
    await h.advance(M)
    assert (await h.event("$own"))["status"] == EventStatus.WAITING
    await h.advance(backoff_ms(1))
    assert h.transport.redacted_ids() == ["$own", "$own"]
    assert await h.event("$own") is None


async def test_on_park_is_told(make_harness) -> None:
    told: list[tuple[str, str]] = []

    async def on_park(room_id: str, reason: str) -> None:
        told.append((room_id, reason))

    h: Harness = await make_harness(on_park=on_park)
    assert h.engine is not None
    await h.engine.set_power(ROOM, False, 0, 50)
    await _one_due(h)
    await h.advance(M)
    assert h.transport.redact_calls == []
    assert [room for room, _ in told] == [ROOM]


async def test_not_found_after_ok_fails_without_retry(h: Harness) -> None:
    assert h.engine is not None
    h.transport.script_check("$m1", Reply(Outcome.NOT_FOUND))
    await _one_due(h)
    await h.advance(M)
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.FAILED
    room = await h.room_row()
    assert (room["failed_count"], room["redacted_count"]) == (1, 0)
    await h.advance(3600 * 1000)
    assert h.transport.redacted_ids() == ["$m1"]
    assert await h.store.pending_count(ROOM) == 0
    status = await h.engine.status(ROOM)
    assert status is not None and (status.pending, status.failed) == (0, 1)


async def test_not_found_on_redact_fails(h: Harness) -> None:
    h.transport.script_redact("$m1", Reply(Outcome.NOT_FOUND))
    await _one_due(h)
    await h.advance(M)
    assert (await h.event("$m1"))["status"] == EventStatus.FAILED
    assert (await h.room_row())["failed_count"] == 1


async def test_earlier_attempt_that_worked_is_not_sent_again(h: Harness) -> None:
    h.transport.script_redact("$m1", Reply(Outcome.TRANSIENT))
    await _one_due(h)
    await h.advance(M)
    row = await h.event("$m1")
    assert row is not None and row["attempts"] == 1
    # It did reach the server after all (or somebody else redacted it).
    h.transport.redacted.add("$m1")
    await h.advance(backoff_ms(1))
    assert len(h.transport.redact_calls) == 1
    assert await h.event("$m1") is None
    assert (await h.room_row())["redacted_count"] == 1


async def test_unconfirmed_redaction_is_retried(h: Harness) -> None:
    present = Reply(Outcome.PRESENT)
    h.transport.script_check("$m1", present, present, present)
    await _one_due(h)
    await h.advance(M)
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.WAITING
    assert row["due_at"] == h.now() + backoff_ms(1)
    await h.advance(backoff_ms(1))
    assert await h.event("$m1") is None
    assert len(h.transport.redact_calls) == 1


async def test_txn_id_is_committed_before_the_request(h: Harness) -> None:
    seen: list[tuple[str, int, int]] = []

    async def inspect(room_id: str, event_id: str, sender: str, txn_id: str) -> None:
        # A separate connection sees only what is committed.
        with h.sync_db() as db:
            stored = db.execute(
                "SELECT txn_id, attempts, status FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        db.close()
        assert stored is not None
        assert stored[0] == txn_id, "the txn id sent is not the one on disk"
        seen.append(stored)

    h.transport.on_redact = inspect
    h.transport.script_redact("$m1", Reply(Outcome.TRANSIENT))
    await _one_due(h)
    await h.advance(M)
    await h.advance(backoff_ms(1))
    assert [(attempts, status) for _, attempts, status in seen] == [(1, 1), (2, 1)]
    assert seen[0][0] == seen[1][0]
    assert await h.event("$m1") is None


async def test_worker_pool_is_bounded(make_harness) -> None:
    """And while due events wait for a worker, the scheduler says it is backlogged
    (the bot then syncs less often: bot/front/pace.py)."""
    release = asyncio.Event()
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, workers=2))
    assert h.engine is not None
    scheduler = h.engine._scheduler
    assert not scheduler.backlogged
    await asyncio.wait_for(scheduler.wait_drained(), 1)  # at once when nothing waits

    async def block(*_: str) -> None:
        await release.wait()

    h.transport.on_redact = block
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(*(Message(f"$m{i}", ALICE, t) for i in range(5)))
    h.clock.advance(M)
    await eventually(lambda: len(h.transport.redact_calls) == 2)
    assert scheduler.in_flight == 2
    assert scheduler.backlogged
    drained = asyncio.create_task(scheduler.wait_drained())
    await asyncio.sleep(0.05)  # give a wrong implementation the chance to start more
    assert len(h.transport.redact_calls) == 2
    assert not drained.done()
    release.set()
    # The last claim finds fewer due events than free workers: the backlog is over.
    await asyncio.wait_for(drained, 5)
    assert not scheduler.backlogged
    await h.settle()
    assert sorted(h.transport.redacted_ids()) == [f"$m{i}" for i in range(5)]
    assert await h.event_ids() == set()


async def test_a_worker_slot_frees_when_its_request_ends(make_harness) -> None:
    """The next due event's request does not wait for the last one's outcome to be
    written down: the limit bounds requests to the homeserver, not bookkeeping."""
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, workers=1))
    assert h.engine is not None
    scheduler = h.engine._scheduler
    release = asyncio.Event()
    finish = scheduler._finish

    async def slow_finish(event: DueEvent, now: int) -> bool:
        await release.wait()
        return await finish(event, now)

    scheduler._finish = slow_finish  # type: ignore[method-assign]
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(Message("$m1", ALICE, t), Message("$m2", ALICE, t))
    h.clock.advance(M)
    # $m1 (the room's first: fetched, so DONE) waits to be written down; $m2 goes ahead.
    await eventually(lambda: len(h.transport.redact_calls) == 2, what="the second request")
    assert await h.event_ids() == {"$m1", "$m2"}
    release.set()
    await h.settle()
    assert sorted(h.transport.redacted_ids()) == ["$m1", "$m2"]


async def test_under_load_the_next_event_is_claimed_before_a_slot_frees(make_harness) -> None:
    """A request ending starts the next due event's at once: it was claimed ahead, so no
    database round trip sits between the two."""
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, workers=1))
    assert h.engine is not None
    scheduler = h.engine._scheduler
    claim = scheduler._claim
    claims_open = asyncio.Event()
    claims_open.set()

    async def gated_claim(now_ms: int, limit: int) -> list[DueEvent]:
        await claims_open.wait()
        return await claim(now_ms, limit)

    scheduler._claim = gated_claim  # type: ignore[method-assign]
    first_request = asyncio.Event()

    async def hold_first(room_id: str, event_id: str, *_: str) -> None:
        if event_id == "$m1":
            await first_request.wait()

    h.transport.on_redact = hold_first
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(*(Message(f"$m{i}", ALICE, t) for i in (1, 2, 3)))
    h.clock.advance(M)
    await eventually(lambda: len(h.transport.redact_calls) == 1, what="the first request")
    assert h.engine._scheduler.backlogged
    claims_open.clear()  # from now on the store answers no claim
    first_request.set()
    await eventually(lambda: len(h.transport.redact_calls) == 2, what="the claimed-ahead one")
    claims_open.set()
    await h.settle()
    assert h.transport.redacted_ids() == ["$m1", "$m2", "$m3"]
    assert await h.event_ids() == set()


async def test_after_a_429_redactions_go_one_at_a_time_until_calm(make_harness) -> None:
    """Releasing every worker when a pause ends would earn a 429 for all but one."""
    h: Harness = await make_harness(config=EngineConfig(bot_user_id=BOT, workers=4))
    active = 0
    seen: list[int] = []  # redactions in flight as each one starts

    async def track(*_: str) -> None:
        nonlocal active
        active += 1
        seen.append(active)
        await asyncio.sleep(0.005)  # real time: lets a wrong scheduler start more
        active -= 1

    h.transport.on_redact = track
    h.transport.script_redact("$m0", Reply(Outcome.RATE_LIMITED, retry_after_ms=1_000))
    await h.set_policy(Policy.after_send(M))
    t = h.now()
    await h.ingest(*(Message(f"$m{i}", ALICE, t) for i in range(30)))
    await h.advance(M)
    assert len(seen) == 4 and max(seen) > 1, seen  # the first batch, one of them refused
    await h.advance(1_000)
    assert await h.event_ids() == set()
    # At most 3 of the first batch counted towards calm: then the next ones go singly ...
    assert seen[4:4 + CALM_AFTER - 3] == [1] * (CALM_AFTER - 3), seen
    # ... and once calm, in parallel again.
    assert max(seen[4 + CALM_AFTER:]) > 1, seen


async def test_worker_crash_keeps_the_event(h: Harness) -> None:
    calls = 0

    async def explode(*_: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in a transport")

    h.transport.on_redact = explode
    await _one_due(h)
    await h.advance(M)
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.WAITING
    await h.advance(30_000)
    assert await h.event("$m1") is None
