"""Delayed redactions in the engine (bot/engine/delayed.py, arming.py, reconcile.py)
with a fake clock and a fake homeserver that schedules, fires, cancels and lists
them: scheduled when a message arrives, confirmed by their echo and counted once,
taken over, replaced, cancelled durably, within the server's limits, and settled
after a crash."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import pytest

from bot.engine.delayed import (
    FIRE_BUDGET_PER_S,
    FIRING_RECHECK_MS,
    FIRING_WINDOW_MS,
    GRACE_MS,
    MIN_LEAD_MS,
    ArmOutcome,
    ArmReply,
    Listed,
    Support,
)
from bot.engine.engine import EngineConfig
from bot.engine.model import DelayState, MemberChange, Message, Receipt, Redaction
from bot.engine.policy import Policy
from bot.engine.redactor import REDACTION_REASON, Outcome, Reply
from bot.engine.store.schema import MIGRATIONS
from bot.engine.store.sql import DELAYED, STALE, UNARMED

from .conftest import ALICE, BOB, BOT, ROOM, FakeTransport, Harness, TestClock, eventually

M = 60_000
ECHO = 10_000


class FakeDelayed(FakeTransport):
    """A homeserver that also holds delayed redactions: scheduled per account (the bot's
    own, or with ``masquerade`` each sender's), de-duplicated by transaction id, fired
    by ``fire`` (which returns their echoes), cancelled, listed."""

    def __init__(self, clock: TestClock, *, offered: bool = True, max_delay_ms: int | None = None,
                 per_user: int | None = None, masquerade: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.offered = offered
        self.max_delay_ms = max_delay_ms
        self.per_user = per_user
        self.masquerade = masquerade
        self.held: dict[str, dict[str, Any]] = {}  # delay id -> what it redacts, when
        self._by_txn: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)
        self.arm_calls: list[tuple[str, int]] = []  # (event id, delay)
        self.cancel_calls: list[str] = []
        self.list_calls: list[str] = []
        self.arm_replies: deque[ArmReply] = deque()
        self.cancel_replies: deque[Reply] = deque()

    @property
    def own_user(self) -> str:
        return BOT

    def delayed_user(self, sender: str) -> str:
        return sender if self.masquerade and sender != BOT else BOT

    def slots(self, user: str) -> int | None:
        return None

    async def delayed_support(self) -> Support | None:
        return Support(True) if self.offered else Support(False, "not offered here")

    def hold(self, room_id: str, target: str, user: str, fires_at: int, txn: str = "") -> str:
        delay_id = f"syd_{next(self._ids)}"
        self.held[delay_id] = {"room": room_id, "target": target, "user": user,
                               "at": fires_at}
        self._by_txn[(user, txn)] = delay_id
        return delay_id

    async def arm(self, room_id: str, event_id: str, sender: str, txn_id: str,
                  delay_ms: int) -> ArmReply:
        self.arm_calls.append((event_id, delay_ms))
        if self.arm_replies:
            return self.arm_replies.popleft()
        user = self.delayed_user(sender)
        if (user, txn_id) in self._by_txn:
            return ArmReply(ArmOutcome.ARMED, delay_id=self._by_txn[(user, txn_id)])
        if self.max_delay_ms is not None and delay_ms > self.max_delay_ms:
            return ArmReply(ArmOutcome.TOO_LONG, max_delay_ms=self.max_delay_ms)
        mine = sorted(h["at"] for h in self.held.values() if h["user"] == user)
        if self.per_user is not None and len(mine) >= self.per_user:
            return ArmReply(ArmOutcome.FULL, retry_after_ms=mine[0] - self.clock.now_ms())
        return ArmReply(ArmOutcome.ARMED, delay_id=self.hold(
            room_id, event_id, user, self.clock.now_ms() + delay_ms, txn_id))

    async def cancel_delayed(self, delay_id: str, user: str) -> Reply:
        self.cancel_calls.append(delay_id)
        if self.cancel_replies:
            return self.cancel_replies.popleft()
        return Reply(Outcome.OK) if self.held.pop(delay_id, None) else Reply(Outcome.NOT_FOUND)

    async def list_delayed(self, user: str) -> list[Listed] | None:
        self.list_calls.append(user)
        return [Listed(d, h["room"], h["target"], REDACTION_REASON, h["at"])
                for d, h in self.held.items() if h["user"] == user]

    def fire(self, *, redact: bool = True) -> list[Redaction]:
        """Send every delayed redaction whose time has come; their echoes."""
        now = self.clock.now_ms()
        echoes = []
        for delay_id, held in sorted(self.held.items(), key=lambda kv: kv[1]["at"]):
            if held["at"] <= now:
                del self.held[delay_id]
                if redact:
                    self.redacted.add(held["target"])
                    echoes.append(Redaction(held["target"], f"$r-{delay_id}", held["user"],
                                            delay_id))
        return echoes

    def armed_for(self, target: str) -> list[str]:
        return [d for d, h in self.held.items() if h["target"] == target]


def _harness(make_harness: Any, **fake: Any) -> Any:
    clock = TestClock()
    config = fake.pop("config", EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO))
    return make_harness(clock=clock, transport=FakeDelayed(clock, **fake), config=config)


@pytest.fixture
async def h(make_harness: Any) -> Harness:
    return await _harness(make_harness)


def _fake(h: Harness) -> FakeDelayed:
    assert isinstance(h.transport, FakeDelayed)
    return h.transport


async def _send(h: Harness, *event_ids: str, timer_ms: int = M, sender: str = ALICE) -> int:
    """Track messages sent now under after_send ``timer_ms``; their deadline."""
    await h.set_policy(Policy.after_send(timer_ms))
    await h.ingest(*(Message(e, sender, h.now()) for e in event_ids))
    return h.now() + timer_ms


async def _state(h: Harness, event_id: str) -> DelayState | None:
    row = await h.event(event_id)
    return None if row is None else DelayState(row["delay_state"])


def test_the_sql_conditions_are_the_migration_s_index_conditions() -> None:
    migration = " ".join(s for m in MIGRATIONS for s in m)
    for condition in (UNARMED, DELAYED, STALE):
        assert f"WHERE {condition}" in migration, condition


async def test_scheduled_when_the_message_arrives(h: Harness) -> None:
    due = await _send(h, "$m1", "$m2")
    fake = _fake(h)
    assert sorted(e for e, _ in fake.arm_calls) == ["$m1", "$m2"]
    assert {d for _, d in fake.arm_calls} == {M}
    row = await h.event("$m1")
    assert row is not None and row["delay_state"] == DelayState.ARMED
    assert row["delay_id"] in fake.held and row["delay_by"] == BOT
    assert (row["delay_at"], row["due_at"]) == (due, due + GRACE_MS)
    assert h.engine is not None
    status = await h.engine.delayed_status()
    assert (status.in_use, status.armed, status.reason) == (True, 2, "")
    # Listings show the deadline, not when Lethe itself would take over.
    room = await h.engine.status(ROOM)
    assert room is not None and (room.next_due, room.armed) == (due, 2)
    assert {p.due_at for p in await h.store.pending(ROOM)} == {due}


async def test_a_message_due_soon_is_not_worth_scheduling(h: Harness) -> None:
    await _send(h, "$m1", timer_ms=MIN_LEAD_MS - 1)
    assert _fake(h).arm_calls == []
    await h.advance(MIN_LEAD_MS)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_its_echo_is_counted_once_and_takes_the_children_along(h: Harness) -> None:
    due = await _send(h, "$m1")
    await h.advance(20_000)
    await h.ingest(Message("$re", BOB, h.now(), parent_id="$m1"))  # a reaction, armed too
    fake = _fake(h)
    assert len(fake.armed_for("$re")) == 1
    assert h.engine is not None
    lags: list[int] = []
    h.engine.observe_redactions(lambda event, lag: lags.append(lag))
    await h.advance(due - h.now() + 300)
    result = await h.ingest(*fake.fire())
    assert [f.due.event_id for f in result.fired] == ["$m1"]
    assert await h.event("$m1") is None
    # Confirmed 300 ms after its deadline; the reaction went at once (with no lag).
    assert lags == [300, 0]
    assert (await h.room_row())["redacted_count"] == 2, "the reaction went at once"
    # The reaction's own delayed redaction was cancelled before Lethe redacted it.
    assert h.transport.redacted_ids() == ["$re"] and fake.held == {}
    stats = h.engine.stats
    assert (stats.delayed_fired, stats.delayed_cancelled, stats.done) == (1, 1, 2)
    await h.ingest(Redaction("$m1", "$r-again", BOT, "syd_1"))  # seen again
    assert stats.done == 2 and (await h.room_row())["redacted_count"] == 2


async def test_lethe_takes_over_when_no_echo_comes(h: Harness) -> None:
    """No echo by its time plus the grace: Lethe cancels first. Nothing to cancel and
    the event redacted (the echo was lost): done, nothing sent. Nothing to cancel and
    the event still there: the homeserver may be sending it yet (it marks all that
    are due at once, then sends them one by one), so Lethe waits for it through the
    firing window, and only then redacts."""
    due = await _send(h, "$fired", "$failed")
    fake = _fake(h)
    fake.redacted.add("$fired")  # the homeserver redacted it; its echo is lost
    fake.held.clear()
    await h.advance(due + GRACE_MS - 1 - h.now())
    assert fake.cancel_calls == [] and h.transport.redacted_ids() == []
    await h.advance(1)
    assert len(fake.cancel_calls) == 2
    assert await h.event("$fired") is None
    assert h.engine is not None and h.engine.stats.delayed_fired == 1
    await h.advance(due + FIRING_WINDOW_MS - 1 - h.now())
    assert h.transport.redacted_ids() == [], "sent while it may still come"
    await h.advance(FIRING_RECHECK_MS)
    assert h.transport.redacted_ids() == ["$failed"]
    assert await h.event_ids() == set()
    assert (await h.room_row())["redacted_count"] == 2


async def test_a_late_firing_is_waited_for_not_redacted_again(h: Harness) -> None:
    due = await _send(h, "$m1")
    fake = _fake(h)
    held = dict(fake.held)
    fake.held.clear()  # being sent: no longer cancellable, not yet in the room
    await h.advance(due + GRACE_MS + 10_000 - h.now())
    assert len(fake.cancel_calls) >= 1 and h.transport.redacted_ids() == []
    fake.held.update(held)
    result = await h.ingest(*fake.fire())
    assert [f.due.event_id for f in result.fired] == ["$m1"]
    await h.advance(FIRING_WINDOW_MS)
    assert h.transport.redacted_ids() == [] and await h.event_ids() == set()


async def test_no_more_than_the_fire_budget_in_one_second(h: Harness) -> None:
    await _send(h, *(f"$m{i}" for i in range(FIRE_BUDGET_PER_S + 3)))
    fake = _fake(h)
    assert len(fake.held) == FIRE_BUDGET_PER_S
    states = [await _state(h, f"$m{i}") for i in range(FIRE_BUDGET_PER_S + 3)]
    assert states.count(DelayState.NEVER) == 3
    await h.advance(M)
    await h.ingest(*fake.fire())
    await h.advance(ECHO)  # Lethe's own are fetched when their echo does not come
    assert len(h.transport.redacted_ids()) == 3 and await h.event_ids() == set()


async def test_no_redaction_while_the_cancel_is_unanswered(h: Harness) -> None:
    due = await _send(h, "$m1")
    fake = _fake(h)
    fake.cancel_replies.extend([Reply(Outcome.TRANSIENT, detail="502")] * 2)
    await h.advance(due + GRACE_MS - h.now())
    await h.advance(999)
    assert len(fake.cancel_calls) == 1 and h.transport.redacted_ids() == []
    await h.advance(1)
    assert len(fake.cancel_calls) == 2 and h.transport.redacted_ids() == []
    await h.advance(1_999)  # backing off
    assert len(fake.cancel_calls) == 2 and h.transport.redacted_ids() == []
    await h.advance(1)
    assert len(fake.cancel_calls) == 3 and h.transport.redacted_ids() == ["$m1"]
    assert fake.held == {}


async def test_read_before_its_cap_the_delayed_redaction_is_replaced(h: Harness) -> None:
    await h.set_policy(Policy.after_read(M, 3600_000))
    await h.ingest(MemberChange(BOB, True), MemberChange(ALICE, True))
    await h.ingest(Message("$m1", ALICE, h.now()))
    fake = _fake(h)
    (first,) = fake.armed_for("$m1")
    assert fake.held[first]["at"] == h.now() + 3600_000
    await h.advance(5_000)
    await h.receipts(Receipt(BOB, "$m1", ts=h.now()))
    assert fake.cancel_calls == [first]
    (second,) = fake.armed_for("$m1")
    assert fake.held[second]["at"] == h.now() + M
    await h.advance(M + 500)
    await h.ingest(*fake.fire())
    assert await h.event("$m1") is None
    assert h.transport.redacted_ids() == []
    assert fake.held == {}


async def test_read_and_due_soon_lethe_cancels_and_redacts(h: Harness) -> None:
    await h.set_policy(Policy.after_read(5_000, 3600_000))
    await h.ingest(MemberChange(BOB, True), MemberChange(ALICE, True))
    await h.ingest(Message("$m1", ALICE, h.now()))
    await h.advance(5_000)
    # Read: due 5 s later, too soon to schedule anew.
    await h.receipts(Receipt(BOB, "$m1", ts=h.now()))
    fake = _fake(h)
    assert fake.cancel_calls == [] and len(fake.held) == 1
    await h.advance(5_000)
    assert h.transport.redacted_ids() == ["$m1"]
    assert len(fake.cancel_calls) == 1 and fake.held == {}


async def test_redacted_by_somebody_else_its_delayed_redaction_is_cancelled_durably(
    make_harness: Any, db_path: Any,
) -> None:
    h = await _harness(make_harness)
    await _send(h, "$m1")
    fake = _fake(h)
    fake.cancel_replies.append(Reply(Outcome.TRANSIENT, detail="down"))
    await h.ingest(Redaction("$m1", "$theirs", ALICE))  # alice deleted her message
    assert await h.event("$m1") is None
    assert len(fake.cancel_calls) == 1 and fake.held, "the first cancel failed"
    await h.close()
    # A restart: the cancellation was kept.
    h2 = await make_harness(clock=h.clock, transport=fake,
                            config=EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO))
    await h2.advance(2_000)
    assert fake.held == {} and len(fake.cancel_calls) == 2
    assert h2.transport.redacted_ids() == []


async def test_a_forgotten_room_s_delayed_redactions_are_cancelled(h: Harness) -> None:
    await _send(h, "$m1", "$m2")
    assert h.engine is not None
    await h.engine.forget_room(ROOM)
    await h.settle()
    assert _fake(h).held == {} and len(_fake(h).cancel_calls) == 2


async def test_a_deadline_beyond_the_maximum_is_scheduled_once_in_reach(
    make_harness: Any,
) -> None:
    h = await _harness(make_harness, max_delay_ms=20_000)
    due = await _send(h, "$m1", timer_ms=M)
    fake = _fake(h)
    assert fake.arm_calls == [("$m1", M)] and fake.held == {}
    await h.advance(due - 20_000 - h.now() - 1)
    assert len(fake.arm_calls) == 1, "not tried again before it is in reach"
    await h.advance(1)
    assert fake.arm_calls[-1] == ("$m1", 20_000)
    assert await _state(h, "$m1") is DelayState.ARMED


async def test_a_full_account_arms_the_earliest_and_takes_the_next_as_slots_free(
    make_harness: Any,
) -> None:
    h = await _harness(make_harness, per_user=2)
    fake = _fake(h)
    await h.set_policy(Policy.after_send(M))
    for i in range(4):  # due 15 s apart
        await h.ingest(Message(f"$m{i}", ALICE, h.now()))
        if i < 3:
            await h.advance(15_000)
    assert sorted(x["target"] for x in fake.held.values()) == ["$m0", "$m1"]
    # $m2 was refused (full); $m3 was not even tried: nothing until a slot frees.
    assert [e for e, _ in fake.arm_calls] == ["$m0", "$m1", "$m2"]
    for _ in range(2):
        await h.advance(min(x["at"] for x in fake.held.values()) - h.now())
        await h.ingest(*fake.fire())
    assert sorted(x["target"] for x in fake.held.values()) == ["$m2", "$m3"]
    for _ in range(2):
        await h.advance(min(x["at"] for x in fake.held.values()) - h.now())
        await h.ingest(*fake.fire())
    await h.advance(GRACE_MS)
    assert await h.event_ids() == set()
    assert h.transport.redacted_ids() == [], "all went by the homeserver"
    assert h.engine is not None and h.engine.stats.delayed_fired == 4


async def test_an_earlier_deadline_takes_the_slot_of_the_latest(make_harness: Any) -> None:
    h = await _harness(make_harness, per_user=1)
    await _send(h, "$late", timer_ms=3600_000)
    await _send(h, "$soon", timer_ms=M)
    fake = _fake(h)
    assert [x["target"] for x in fake.held.values()] == ["$soon"]
    assert await _state(h, "$late") is DelayState.NONE


async def test_a_crash_between_the_request_and_its_answer_is_settled_from_the_list(
    make_harness: Any,
) -> None:
    """A request reached the homeserver and its answer was lost with the process: the
    row stayed ARMING. On start the list has it (adopted, not scheduled twice) or,
    where it fired while Lethe was away, the event shows redacted (counted once,
    nothing sent)."""
    h = await _harness(make_harness, offered=False)
    due = await _send(h, "$listed", "$fired")
    fake = _fake(h)
    async with h.store.transaction() as tx:  # as the Armer leaves it before the request
        for event_id in ("$listed", "$fired"):
            assert await tx.begin_arm(event_id, f"txn-{event_id}", BOT, due)
    await h.close()
    # What the lost requests did: one is held, the other fired while Lethe was away.
    fake.offered = True
    fake.hold(ROOM, "$listed", BOT, due, "txn-$listed")
    h.clock.advance(M - 1)
    fake.redacted.add("$fired")
    h2 = await make_harness(clock=h.clock, transport=fake,
                            config=EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO))
    assert await _state(h2, "$listed") is DelayState.ARMED
    assert await h2.event("$fired") is None
    assert fake.arm_calls == [] and h2.transport.redacted_ids() == []
    assert h2.engine is not None and h2.engine.stats.delayed_fired == 1
    assert (await h2.room_row())["redacted_count"] == 1
    await h2.advance(1)
    await h2.ingest(*fake.fire())
    assert await h2.event_ids() == set() and h2.engine.stats.delayed_fired == 2
    assert h2.transport.redacted_ids() == []


async def test_a_sender_deleting_their_own_message_early_is_not_the_delayed_one(
    make_harness: Any,
) -> None:
    """The bridge schedules as each sender, so the sender's own redaction looks the
    same but for its time (and its missing delay id)."""
    h = await _harness(make_harness, masquerade=True)
    await _send(h, "$m1")
    fake = _fake(h)
    assert [x["user"] for x in fake.held.values()] == [ALICE]
    await h.advance(5_000)
    result = await h.ingest(Redaction("$m1", "$own", ALICE))
    assert result.fired == () and await h.event("$m1") is None
    assert fake.held == {} and h.engine is not None and h.engine.stats.delayed_fired == 0


async def test_without_the_feature_nothing_changes(make_harness: Any) -> None:
    h = await _harness(make_harness, offered=False)
    await _send(h, "$m1")
    assert _fake(h).arm_calls == []
    assert h.engine is not None
    status = await h.engine.delayed_status()
    assert (status.in_use, status.reason) == (False, "not offered here")
    await h.advance(M)
    assert h.transport.redacted_ids() == ["$m1"]


async def test_turned_off_in_the_config(make_harness: Any) -> None:
    config = EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO, delayed_redactions=False)
    h = await _harness(make_harness, config=config)
    await _send(h, "$m1")
    assert _fake(h).arm_calls == [] and _fake(h).list_calls == []
    assert h.engine is not None
    assert "redaction.delayed: off" in (await h.engine.delayed_status()).reason


async def test_nothing_is_scheduled_while_due_redactions_wait(make_harness: Any) -> None:
    """Scheduling yields to what is due: while the scheduler has a backlog, the
    homeserver's capacity goes to the redactions."""
    config = EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO, workers=1)
    h = await _harness(make_harness, offered=False, config=config)
    fake = _fake(h)
    gate = asyncio.Event()

    async def slow(room_id: str, event_id: str, sender: str, txn_id: str) -> None:
        await gate.wait()

    await h.set_policy(Policy.after_send(M), room="!later:x")
    await _send(h, *(f"$due{i}" for i in range(5)), timer_ms=1_000)  # Lethe's, not armed
    fake.offered = True
    assert h.engine is not None and h.engine._armer is not None
    h.engine._armer.support = Support(True)
    fake.on_redact = slow
    h.clock.advance(1_000)
    await eventually(lambda: h.engine is not None and h.engine.backlogged, 5, "a backlog")
    await h.ingest(Message("$new", ALICE, h.now()), room="!later:x", settle=False)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert fake.arm_calls == [], "scheduled while redactions were waiting"
    gate.set()
    await h.settle()
    assert fake.arm_calls == [("$new", M)]
    assert h.transport.redacted_ids() == [f"$due{i}" for i in range(5)]




async def test_a_rebuilt_database_adopts_what_the_homeserver_still_holds(
    make_harness: Any,
) -> None:
    """lethe.db lost and rebuilt from history: its events have no delayed redaction on
    record, but the homeserver still holds the old ones: adopted, not scheduled again."""
    h = await _harness(make_harness, offered=False)
    due = await _send(h, "$m1")
    await h.close()
    fake = _fake(h)
    fake.offered = True
    held = fake.hold(ROOM, "$m1", BOT, due)
    h2 = await make_harness(clock=h.clock, transport=fake,
                            config=EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO))
    row = await h2.event("$m1")
    assert row is not None and (row["delay_state"], row["delay_id"]) == (DelayState.ARMED, held)
    assert fake.arm_calls == [] and fake.cancel_calls == []


@pytest.mark.sqlite_only  # reads SQLite's own machinery
async def test_a_database_from_before_migrates_and_its_events_get_scheduled(
    make_harness: Any, db_path: Any,
) -> None:
    """The delayed-redaction migration (the last one) on a database from before it:
    waiting events get no delayed redaction recorded, and are scheduled on start."""
    from .test_store import _old_database

    conn = _old_database(db_path, len(MIGRATIONS) - 1)
    clock = TestClock()
    conn.execute(
        "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
        "due_at, sent_at) VALUES ('$old', '!r:x', ?, 1, ?, 1, ?, ?, ?)",
        (ALICE, clock.now_ms(), M, clock.now_ms() + M, clock.now_ms()))
    conn.commit()
    conn.close()
    fake = FakeDelayed(clock)
    h = await make_harness(clock=clock, transport=fake,
                           config=EngineConfig(bot_user_id=BOT, echo_wait_ms=ECHO))
    assert fake.arm_calls == [("$old", M)]
    assert await _state(h, "$old") is DelayState.ARMED
