"""Confirming a redaction by its echo: the redaction event whose id ``/redact``
returned coming back through the event stream, instead of fetching the event."""

from __future__ import annotations

import pytest

from bot.engine.echoes import SPOT_CHECK_EVERY
from bot.engine.engine import EngineConfig
from bot.engine.model import EventStatus, IngestResult, Message, Redaction
from bot.engine.policy import Policy
from bot.engine.redactor import MAX_UNCONFIRMED, Outcome, Redactor, Reply

from .conftest import ALICE, BOB, BOT, ROOM, FakeTransport, Harness, TestClock

M = 60_000
W = 10_000  # echo wait: short of M, so "due" and "echo wait over" never coincide
GAP = 1_000  # between messages, so each falls due (and is redacted) on its own
ROOM2 = "!other:x"
ROOM3 = "!third:x"
ECHO = EngineConfig(bot_user_id=BOT, echo_wait_ms=W)


@pytest.fixture
async def h(make_harness) -> Harness:
    """An engine whose front brings its own redactions back (like the bot and bridge)."""
    return await make_harness(config=ECHO)


def _redactor(h: Harness) -> Redactor:
    assert h.engine is not None
    return h.engine._redactor


async def _track(h: Harness, *event_ids: str, room: str = ROOM) -> list[int]:
    """Track messages under after_send 1m, GAP apart; return their due times."""
    await h.set_policy(Policy.after_send(M), room=room)
    t = h.now() - (len(event_ids) - 1) * GAP  # all sent by now: none after it arrived
    await h.ingest(
        *(Message(e, ALICE, t + i * GAP) for i, e in enumerate(event_ids)), room=room
    )
    return [t + i * GAP + M for i in range(len(event_ids))]


async def _redact_in_turn(h: Harness, dues: list[int]) -> None:
    """Advance the clock to each due time in turn."""
    for due in dues:
        await h.advance(due - h.now())


async def _assert_sent(h: Harness, event_id: str, sent_at: int) -> None:
    row = await h.event(event_id)
    assert row is not None, f"{event_id} is gone"
    assert (row["status"], row["redaction_id"], row["check_at"]) == (
        EventStatus.SENT, FakeTransport.redaction_id(event_id), sent_at + W,
    ), event_id


async def test_echo_confirms_without_a_fetch(h: Harness) -> None:
    assert h.engine is not None
    lags: dict[str, int] = {}
    h.engine._scheduler.observe_redactions(lambda event, lag: lags.__setitem__(event.event_id, lag))
    dues = await _track(h, "$m1", "$m2", "$m3")
    await _redact_in_turn(h, dues)
    assert h.transport.redacted_ids() == ["$m1", "$m2", "$m3"]
    # The first in the room is a spot check: fetched, done. The others wait for their echo.
    assert h.transport.checked_ids() == ["$m1"]
    assert await h.event("$m1") is None
    for event_id, due in zip(("$m2", "$m3"), dues[1:], strict=True):
        await _assert_sent(h, event_id, due)
    stats = h.engine.stats
    assert (stats.done, stats.echoed, stats.fetches) == (1, 0, 1)
    assert (await h.room_row())["redacted_count"] == 1
    assert lags == {"$m1": 0}

    await h.advance(3_000)  # less than W: no fetch yet
    result = await h.ingest(h.transport.echo("$m2"))
    assert [e.event_id for e in result.redacted] == ["$m2"]
    assert await h.event("$m2") is None
    assert (await h.room_row())["redacted_count"] == 2
    assert (stats.done, stats.echoed, stats.fetches) == (2, 1, 1)
    # Lag from the policy deadline, not from when the echo wait would have ended.
    assert lags["$m2"] == h.now() - dues[1] == 3_000 + GAP

    await h.ingest(h.transport.echo("$m3"))
    await h.advance(2 * W)
    assert h.transport.checked_ids() == ["$m1"], "an echoed redaction was fetched anyway"
    assert h.transport.redacted_ids() == ["$m1", "$m2", "$m3"]
    assert await h.event_ids() == set()
    assert (stats.done, stats.echoed) == (3, 2)
    assert (await h.room_row())["redacted_count"] == 3
    assert lags["$m3"] == 3_000


async def test_echo_while_the_worker_holds_the_event(h: Harness) -> None:
    """The echo can beat the /redact reply; the worker must find it, not wait W."""
    assert h.engine is not None
    during: list[IngestResult] = []

    async def echo_first(room_id: str, event_id: str, sender: str, txn_id: str) -> None:
        if event_id == "$m2":
            during.append(await h.ingest(h.transport.echo(event_id), settle=False))

    h.transport.on_redact = echo_first
    dues = await _track(h, "$m1", "$m2")
    await _redact_in_turn(h, dues)
    assert h.now() == dues[1], "the clock did not move past the due time"
    assert [r.redacted for r in during] == [()], "counted by the worker, not the ingest"
    assert await h.event("$m2") is None
    assert h.transport.checked_ids() == ["$m1"]
    stats = h.engine.stats
    assert (stats.done, stats.echoed, stats.fetches) == (2, 1, 1)
    assert (await h.room_row())["redacted_count"] == 2
    assert h.engine._scheduler.last_lag_ms == 0


async def test_someone_elses_redaction_while_held_does_not_confirm_ours(h: Harness) -> None:
    async def other_first(room_id: str, event_id: str, sender: str, txn_id: str) -> None:
        if event_id == "$m2":
            await h.ingest(Redaction(event_id, "$theirs", BOB), settle=False)

    h.transport.on_redact = other_first
    dues = await _track(h, "$m1", "$m2")
    await _redact_in_turn(h, dues)
    await _assert_sent(h, "$m2", dues[1])
    assert h.engine is not None and h.engine.stats.echoed == 0
    await h.ingest(h.transport.echo("$m2"))
    assert await h.event("$m2") is None
    assert (h.engine.stats.done, h.engine.stats.echoed) == (2, 1)
    assert h.transport.checked_ids() == ["$m1"]


async def test_no_echo_fetches_after_the_wait(h: Harness) -> None:
    assert h.engine is not None
    dues = await _track(h, "$m1", "$m2")
    await _redact_in_turn(h, dues)
    await h.advance(W - 1)
    assert h.transport.checked_ids() == ["$m1"]
    await _assert_sent(h, "$m2", dues[1])
    await h.advance(1)
    assert h.transport.checked_ids() == ["$m1", "$m2"]
    assert h.transport.redacted_ids() == ["$m1", "$m2"], "redacted twice"
    assert await h.event_ids() == set()
    stats = h.engine.stats
    assert (stats.done, stats.echoed, stats.fetches) == (2, 0, 2)
    assert (await h.room_row())["redacted_count"] == 2
    assert h.engine._scheduler.last_lag_ms == W
    # A late echo changes nothing.
    result = await h.ingest(h.transport.echo("$m2"))
    assert result.redacted == ()
    assert (stats.done, stats.echoed) == (2, 0)
    assert (await h.room_row())["redacted_count"] == 2


async def test_no_echo_and_content_still_there_resends_with_the_same_txn(h: Harness) -> None:
    dues = await _track(h, "$m1", "$m2")
    await _redact_in_turn(h, dues)
    h.transport.script_check("$m2", Reply(Outcome.PRESENT))
    await h.advance(W)
    calls = [call for call in h.transport.redact_calls if call[1] == "$m2"]
    assert len(calls) == 2 and calls[0][3] == calls[1][3]
    # The resend is confirmed by a fetch, not left to wait for another echo.
    assert h.transport.checked_ids() == ["$m1", "$m2", "$m2"]
    assert await h.event_ids() == set()


async def test_every_nth_redaction_is_a_spot_check(make_harness) -> None:
    # One worker: redactions are accepted in due order, so which is n-th is known.
    h: Harness = await make_harness(
        config=EngineConfig(bot_user_id=BOT, echo_wait_ms=W, workers=1)
    )
    n = 2 * SPOT_CHECK_EVERY + 1
    ids = [f"$m{i + 1}" for i in range(n)]
    await h.set_policy(Policy.after_send(M), room=ROOM2)
    dues = await _track(h, *ids)
    await h.advance(dues[-1] - h.now())
    # After all of ROOM's: the first in another room is a spot check of its own.
    await h.ingest(Message("$other", ALICE, dues[-1] - M + GAP), room=ROOM2)
    await h.advance(dues[-1] + GAP - h.now())
    assert h.transport.redacted_ids() == [*ids, "$other"]
    expected = [
        "$m1",
        f"$m{SPOT_CHECK_EVERY}",
        f"$m{2 * SPOT_CHECK_EVERY}",
        "$other",
    ]
    assert h.transport.checked_ids() == expected
    sent = await h.event_ids()
    assert sent == set(ids) - set(expected)
    for event_id in sent:
        assert (await h.event(event_id))["status"] == EventStatus.SENT


async def test_content_after_a_200_stops_trusting_echoes(h: Harness) -> None:
    present = Reply(Outcome.PRESENT)
    h.transport.script_check("$m1", present, present, present)
    dues = await _track(h, "$m1", "$m2", "$m3")
    assert _redactor(h).trusts_echoes
    await h.advance(dues[0] - h.now())
    assert not _redactor(h).trusts_echoes
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.WAITING
    await _redact_in_turn(h, dues[1:])
    # Fetched at once, not left waiting for an echo.
    assert h.transport.checked_ids().count("$m2") == 1
    assert h.transport.checked_ids().count("$m3") == 1
    assert await h.event_ids() <= {"$m1"}
    await h.advance(W)
    assert await h.event_ids() == set()
    assert h.engine is not None and h.engine.stats.echoed == 0


async def test_no_echo_confirms_once_echoes_are_distrusted(h: Harness) -> None:
    """The kill switch also holds for rows already waiting for their echo, and for
    the echo of a row whose fetch found content."""
    dues = await _track(h, "$m1", "$m2", "$m3")
    await _redact_in_turn(h, dues[:2])  # $m1 fetched (first in room), $m2 SENT
    await _assert_sent(h, "$m2", dues[1])
    present = Reply(Outcome.PRESENT)
    h.transport.script_check("$m3", present, present, present)
    h.transport.script_redact("$m3", Reply(Outcome.OK, event_id=FakeTransport.redaction_id("$m3")))
    # Every 20th is fetched: force $m3 to be a spot check, which finds content.
    h.engine._echoes._accepted = SPOT_CHECK_EVERY - 1  # type: ignore[union-attr]
    await _redact_in_turn(h, dues[2:])
    assert not _redactor(h).trusts_echoes
    for event_id in ("$m2", "$m3"):
        result = await h.ingest(h.transport.echo(event_id))
        assert result.redacted == ()
    row = await h.event("$m3")
    assert row is not None and row["status"] == EventStatus.WAITING and row["redaction_id"] is None
    await _assert_sent(h, "$m2", dues[1])
    await h.advance(dues[1] + W - h.now())
    assert "$m2" in h.transport.checked_ids()
    assert await h.event("$m2") is None
    assert h.engine is not None and h.engine.stats.echoed == 0


async def test_a_late_echo_does_not_undo_a_failure(h: Harness) -> None:
    present = Reply(Outcome.PRESENT)
    dues = await _track(h, "$m1")
    h.transport.script_check("$m1", *[present] * 40)
    await h.advance(dues[0] - h.now())
    for _ in range(20):
        row = await h.event("$m1")
        assert row is not None
        if row["status"] == EventStatus.FAILED:
            break
        await h.advance(60_000)
    assert row["status"] == EventStatus.FAILED and row["redaction_id"] is None
    result = await h.ingest(h.transport.echo("$m1"))
    assert result.redacted == ()
    row = await h.event("$m1")
    assert row is not None and row["status"] == EventStatus.FAILED
    assert (await h.room_row())["redacted_count"] == 0


async def test_an_unknown_echo_after_a_crash_is_fetched_and_counted(h: Harness) -> None:
    """A crash between the 200 and recording it leaves a row with a txn id and no
    redaction id; the echo that then comes is ours, so the row is kept, and the retry
    fetches first and counts it instead of dropping it uncounted."""
    dues = await _track(h, "$m1")
    async with h.store.transaction():
        await h.store.conn.execute(
            "UPDATE events SET txn_id = 'lethe.t', attempts = 1, due_at = ? WHERE event_id = ?",
            (dues[0] + W, "$m1"),
        )
    result = await h.ingest(Redaction("$m1", "$from-before-the-crash", BOT))
    assert result.redacted == ()
    assert await h.event("$m1") is not None
    h.transport.redacted.add("$m1")
    await h.advance(dues[0] + W - h.now())
    assert h.transport.checked_ids() == ["$m1"] and h.transport.redact_calls == []
    assert await h.event("$m1") is None
    assert (await h.room_row())["redacted_count"] == 1


async def test_overdue_echo_is_fetched_before_parking(h: Harness) -> None:
    """Without power now, a row whose redaction was accepted earlier is fetched rather
    than parked: it is most likely gone already."""
    dues = await _track(h, "$m1", "$m2")
    await _redact_in_turn(h, dues)
    await _assert_sent(h, "$m2", dues[1])
    assert h.engine is not None
    await h.engine.set_power(ROOM, False, 0, 50)
    await h.advance(dues[1] + W - h.now())
    assert "$m2" in h.transport.checked_ids()
    assert await h.event("$m2") is None
    assert h.engine.stats.parked == 0


async def test_no_redaction_id_means_a_fetch(h: Harness) -> None:
    dues = await _track(h, "$m1", "$m2")
    h.transport.script_redact("$m2", Reply(Outcome.OK))
    await _redact_in_turn(h, dues)
    assert h.transport.checked_ids() == ["$m1", "$m2"]
    assert await h.event_ids() == set()


async def test_sent_rows_survive_a_restart(make_harness) -> None:
    first: Harness = await make_harness(config=ECHO)
    dues = await _track(first, "$m1", "$m2", "$m3", "$m4")
    await _redact_in_turn(first, dues)
    await first.close()
    with first.sync_db() as db:
        rows = db.execute(
            "SELECT event_id, status, redaction_id FROM events ORDER BY event_id"
        ).fetchall()
    db.close()
    assert rows == [
        (e, EventStatus.SENT, FakeTransport.redaction_id(e)) for e in ("$m2", "$m3", "$m4")]

    transport = FakeTransport()
    second: Harness = await make_harness(
        clock=TestClock(first.now() + 1_000), transport=transport, config=ECHO
    )
    assert second.engine is not None
    # Not reset like in-flight rows: nothing is sent again.
    assert transport.redact_calls == [] and transport.check_calls == []
    for event_id, due in zip(("$m2", "$m3", "$m4"), dues[1:], strict=True):
        await _assert_sent(second, event_id, due)

    result = await second.ingest(first.transport.echo("$m2"))
    assert [e.event_id for e in result.redacted] == ["$m2"]
    assert await second.event("$m2") is None
    assert (await second.room_row())["redacted_count"] == 2
    assert (second.engine.stats.done, second.engine.stats.echoed) == (1, 1)

    # Another redaction id, from anybody, is not the confirmation of ours: the row
    # stays SENT and the fetch when the wait is over decides.
    for target, other, who in (("$m3", "$not-ours", BOT),
                               ("$m4", "$not-ours-either", "@mod:elsewhere")):
        result = await second.ingest(Redaction(target, other, who))
        assert result.redacted == ()
    await _assert_sent(second, "$m3", dues[2])
    await _assert_sent(second, "$m4", dues[3])
    assert (await second.room_row())["redacted_count"] == 2
    assert (second.engine.stats.done, second.engine.stats.echoed) == (1, 1)

    transport.redacted.update({"$m3", "$m4"})  # the first process's redactions did work
    await second.advance(dues[3] + W - second.now())
    assert sorted(transport.checked_ids()) == ["$m3", "$m4"]
    assert transport.redact_calls == []
    assert await second.event_ids() == set()
    assert (await second.room_row())["redacted_count"] == 4
    assert (second.engine.stats.done, second.engine.stats.echoed) == (3, 1)


@pytest.mark.parametrize(
    ("sender", "redactor", "kept"),
    [
        (ALICE, BOB, False),  # a moderator on the sender's server
        (ALICE, ALICE, False),  # the sender
        (ALICE, None, False),  # a front that does not say who
        (ALICE, "@mod:elsewhere", True),  # applied only if @mod has power: unknown
        ("@eve:elsewhere", "@mod:elsewhere", False),
        ("@eve:elsewhere", BOT, True),
    ],
)
async def test_redaction_by_somebody_else(
    h: Harness, sender: str, redactor: str | None, kept: bool
) -> None:
    await h.set_policy(Policy.after_send(M))
    due = h.now() + M
    await h.ingest(Message("$m1", sender, h.now()))
    result = await h.ingest(Redaction("$m1", "$theirs", redactor))
    assert result.redacted == ()
    assert (await h.event_ids() == {"$m1"}) is kept
    await h.advance(M)
    assert h.transport.redacted_ids() == (["$m1"] if kept else [])
    assert await h.event_ids() == set()
    assert (await h.room_row())["redacted_count"] == int(kept)
    if kept:
        assert h.engine is not None and h.engine._scheduler.last_lag_ms == h.now() - due == 0


async def test_without_echo_wait_every_redaction_is_fetched(make_harness) -> None:
    h: Harness = await make_harness()  # EngineConfig's default: no echo wait
    assert h.engine is not None
    dues = await _track(h, "$m1", "$m2", "$m3")
    await _redact_in_turn(h, dues)
    assert h.transport.checked_ids() == ["$m1", "$m2", "$m3"]
    assert await h.event_ids() == set()
    stats = h.engine.stats
    assert (stats.done, stats.echoed, stats.fetches) == (3, 0, 3)
    assert not _redactor(h).trusts_echoes
    # Echoes of redactions already confirmed change nothing.
    result = await h.ingest(*(h.transport.echo(e) for e in ("$m1", "$m2", "$m3")))
    assert result.redacted == ()
    assert (stats.done, stats.echoed) == (3, 0)
    assert (await h.room_row())["redacted_count"] == 3


async def test_children_of_an_echoed_parent_follow_at_once(h: Harness) -> None:
    assert h.engine is not None
    dues = await _track(h, "$m0", "$m1")
    await h.set_policy(Policy.off())
    await h.ingest(
        Message("$react", BOB, h.now(), parent_id="$m1"),
        Message("$edit", ALICE, h.now(), parent_id="$m1"),
    )
    await _redact_in_turn(h, dues)
    await _assert_sent(h, "$m1", dues[1])
    assert h.transport.redacted_ids() == ["$m0", "$m1"], "children wait for their parent"
    await h.advance(1_000)
    await h.ingest(h.transport.echo("$m1"))
    assert sorted(h.transport.redacted_ids()[2:]) == ["$edit", "$react"]
    assert h.now() == dues[1] + 1_000, "children went at once, not after the echo wait"


@pytest.mark.parametrize("by_echo", [True, False], ids=["echo", "fetch"])
async def test_lag_of_a_child_confirmed_later(h: Harness, by_echo: bool) -> None:
    """A child tracked under off has no deadline of its own: its lag counts from the
    moment its parent was confirmed, which made it due."""
    assert h.engine is not None
    lags: dict[str, int] = {}
    h.engine._scheduler.observe_redactions(lambda event, lag: lags.__setitem__(event.event_id, lag))
    dues = await _track(h, "$m0", "$m1")
    await h.set_policy(Policy.off())
    await h.ingest(Message("$react", BOB, h.now(), parent_id="$m1"))
    await _redact_in_turn(h, dues)
    await h.advance(1_000)
    await h.ingest(h.transport.echo("$m1"))  # $react falls due, is redacted, waits
    made_due = h.now()
    await _assert_sent(h, "$react", made_due)
    if by_echo:
        await h.advance(2_000)
        await h.ingest(h.transport.echo("$react"))
    else:
        await h.advance(W)
        assert h.transport.checked_ids()[-1] == "$react"
    assert await h.event_ids() == set()
    assert lags["$react"] == h.now() - made_due


async def test_an_event_the_homeserver_hides_after_a_200_waits_for_the_echo(
    h: Harness,
) -> None:
    """Synapse hides an event past its room's m.room.retention max_lifetime from every
    client, Lethe too, from the moment Lethe redacts it when the policy is mirrored: a
    spot check's fetch (the first redaction in each room) then answers 404. The echo
    decides; without it, unconfirmed. In a room without the mirror a 404 stays a failure
    at once."""
    assert h.engine is not None
    gone = Reply(Outcome.NOT_FOUND, detail="M_NOT_FOUND")
    mirrored = Policy.after_send(M).mirrored(True)
    for event_id in ("$plain", "$hidden", "$no-echo"):
        h.transport.script_check(event_id, *[gone] * 20)
    (due,) = await _track(h, "$plain")
    await h.advance(due - h.now())
    assert (await h.event("$plain"))["status"] == EventStatus.FAILED

    await h.set_policy(mirrored, room=ROOM2)
    await h.ingest(Message("$hidden", ALICE, h.now()), room=ROOM2)
    await h.advance(M)
    await _assert_sent(h, "$hidden", h.now())
    result = await h.ingest(h.transport.echo("$hidden"), room=ROOM2)
    assert [e.event_id for e in result.redacted] == ["$hidden"]
    room = await h.room_row(ROOM2)
    assert (room["redacted_count"], room["failed_count"]) == (1, 0)

    # No echo at all: fetched and resent (the same transaction) until the bound, then
    # given up as before.
    await h.set_policy(mirrored, room=ROOM3)
    await h.ingest(Message("$no-echo", ALICE, h.now()), room=ROOM3)
    await h.advance(M)
    for _ in range(MAX_UNCONFIRMED):
        await h.advance(W)
    assert (await h.event("$no-echo"))["status"] == EventStatus.FAILED
    calls = [call for call in h.transport.redact_calls if call[1] == "$no-echo"]
    assert len(calls) == MAX_UNCONFIRMED and len({call[3] for call in calls}) == 1
    assert (await h.room_row(ROOM3))["failed_count"] == 1
