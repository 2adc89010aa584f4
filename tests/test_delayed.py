"""Delayed redactions (issue 14 §3) against a real Synapse that offers them
(the ``delayed_hs`` fixture: delays of at most 30 s, 3 delayed events per account):
the homeserver redacts on time while the bot is stopped, Lethe confirms and counts
each once, and nothing is ever redacted twice."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from nio import RedactionEvent

from bot.devtools.localsynapse import LocalSynapse, find_free_port
from bot.devtools.people import Person
from bot.engine.engine import Engine
from bot.engine.model import DelayState
from bot.matrix.api import MatrixHttp
from tests.cli_harness import lethe_cli
from tests.harness import (
    BotHandle,
    all_redacted,
    bot_room,
    eventually,
    stays,
    unique,
    write_bot_config,
)
from tests.test_metrics import scrape

TIMER_S = 15


@dataclass
class Setup:
    """A bot (running) in an encrypted room of alice's, with bob, under a policy."""

    handle: BotHandle
    alice: Person
    bob: Person
    room: str


@pytest.fixture
async def delayed_room(delayed_hs: LocalSynapse, tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: ``await delayed_room(policy, **bot_config)`` on ``delayed_hs``."""
    made: list[Person] = []
    handles: list[BotHandle] = []

    async def make(policy: str, **config: Any) -> Setup:
        handle = BotHandle(write_bot_config(delayed_hs, tmp_path / "bot", **config))
        handles.append(handle)
        alice, bob = (Person(delayed_hs, unique(n), tmp_path / "people" / n)
                      for n in ("alice", "bob"))
        for person in (alice, bob):
            await person.start()
            made.append(person)
        room = await alice.create_room([bob.user_id, handle.user_id],
                                       power={handle.user_id: 50})
        await bob.join(room)
        await handle.start()
        await alice.wait_notice(room, "Lethe is here")
        await alice.send(room, f"!lethe {policy}")
        announced = policy.replace(" cap", ", cap")  # as Policy.describe says it
        await alice.wait_notice(room, f"changed the retention policy: {announced}")
        return Setup(handle, alice, bob, room)

    yield make
    for handle in handles:
        await handle.stop()
    for person in made:
        await person.close()


def _engine(handle: BotHandle) -> Engine:
    assert handle.bot is not None and handle.bot.engine is not None
    return handle.bot.engine


async def _armed(handle: BotHandle, *event_ids: str) -> bool:
    delays = await _engine(handle)._store.delays_of(event_ids)
    return all(e in delays and delays[e].state is DelayState.ARMED for e in event_ids)


async def redactions_of(person: Person, room: str, target: str) -> list[dict[str, Any]]:
    """Every m.room.redaction of ``target`` in the room's history, as ``person`` sees it."""
    status, data = await person.api(
        "GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "200"})
    assert status == 200, data
    return [e for e in data.get("chunk", [])
            if e.get("type") == "m.room.redaction"
            and (e.get("redacts") or e.get("content", {}).get("redacts")) == target]


class Watch:
    """When ``person``'s client saw each redaction arrive in its sync (its wall clock).
    A delayed event's ``origin_server_ts`` is the time it was scheduled for, so only
    another client's view says when it really came."""

    def __init__(self, person: Person) -> None:
        self.person = person
        self.seen: dict[str, float] = {}
        person.client.add_event_callback(self._on, RedactionEvent)  # type: ignore[arg-type]

    async def _on(self, room: Any, event: RedactionEvent) -> None:
        self.seen.setdefault(event.redacts, time.time())

    async def late_ms(self, room: str, target: str, timer_s: float) -> float:
        """How long after its after_send deadline the redaction of ``target`` came."""
        await eventually(lambda: target in self.seen, 30, what=f"{target} seen redacted")
        message = await self.person.event(room, target)
        return self.seen[target] * 1000 - message["origin_server_ts"] - timer_s * 1000


async def delayed_events(hs: LocalSynapse, token: str) -> list[dict[str, Any]]:
    http = MatrixHttp(hs.base_url, token)
    try:
        reply = await http.delayed_events()
    finally:
        await http.close()
    assert reply.ok, reply
    return list(reply.body.get("delayed_events", []))


async def test_homeserver_redacts_on_time_while_the_bot_is_stopped(
    delayed_hs, delayed_room,
) -> None:
    setup = await delayed_room(f"after-send {TIMER_S}s")
    handle, alice, bob, room = setup.handle, setup.alice, setup.bob, setup.room
    watch = Watch(bob)
    sent = [await alice.send(room, f"canary-delayed message {i}") for i in range(2)]
    await eventually(lambda: _armed(handle, *sent), 10, what="both armed")
    engine = _engine(handle)
    assert (await engine.delayed_status()).in_use
    before = (await engine.room(room)).redacted_count  # type: ignore[union-attr]
    # The bot's policy notice is pinned, so held out of expiry: only the messages.
    pending = await engine.pending_count(room)
    assert pending == len(sent)
    await handle.stop()
    stopped_at = time.time()

    # Nothing runs Lethe now; the homeserver redacts each at its deadline.
    await eventually(all_redacted(bob, room, *sent), TIMER_S + 15,
                     what="redacted by the homeserver")
    for event_id in sent:
        late = await watch.late_ms(room, event_id, TIMER_S)
        assert 0 <= late < 2000, f"redacted {late} ms after its deadline"
        (redaction,) = await redactions_of(bob, room, event_id)
        assert redaction["sender"] == handle.user_id
        assert watch.seen[event_id] > stopped_at

    await handle.start()
    engine = _engine(handle)

    async def counted() -> bool:
        return await engine.pending_count(room) == 0

    await eventually(counted, 30, what="nothing pending after the restart")
    row = await engine.room(room)
    assert row is not None and row.redacted_count == before + pending
    # Each counted once, as the homeserver's; Lethe itself redacted nothing.
    assert engine.stats.delayed_fired == engine.stats.done == pending
    await stays(lambda: one_each(bob, room, sent), 3)
    assert engine.stats.delayed_fired == engine.stats.done == pending
    assert not await delayed_events(delayed_hs, handle.bot.creds.access_token)  # type: ignore[union-attr]


async def one_each(person: Person, room: str, event_ids: list[str]) -> bool:
    for event_id in event_ids:
        assert len(await redactions_of(person, room, event_id)) == 1, event_id
    return True


async def test_read_before_its_cap_it_goes_at_the_earlier_time_and_once(
    delayed_hs, delayed_room,
) -> None:
    """after_read 12s, cap 28s: scheduled for the cap when sent; bob reads it at once,
    so it is replaced by one for 12 s after the read, which the homeserver sends. The
    cap's never fires a second redaction."""
    setup = await delayed_room("after-read 12s cap 28s")
    handle, alice, bob, room = setup.handle, setup.alice, setup.bob, setup.room
    watch = Watch(bob)
    message = await alice.send(room, "canary-delayed read me")
    await eventually(lambda: _armed(handle, message), 10, what="armed for the cap")
    engine = _engine(handle)
    (first,) = (await engine._store.delays_of([message])).values()
    await bob.receipt(room, message)
    read_at = time.time()

    async def replaced() -> bool:
        delay = (await engine._store.delays_of([message])).get(message)
        return delay is not None and delay.state is DelayState.ARMED \
            and delay.delay_id != first.delay_id

    await eventually(replaced, 10, what="replaced for the earlier deadline")
    await eventually(all_redacted(bob, room, message), 25, what="redacted after the read")
    (redaction,) = await redactions_of(bob, room, message)
    assert 11.5 <= watch.seen[message] - read_at < 14, "not 12 s after the read"
    assert redaction["sender"] == handle.user_id
    assert engine.stats.delayed_cancelled >= 1
    # Past the cap and Lethe's grace after it: still the one redaction.
    sent_at = (await bob.event(room, message))["origin_server_ts"] / 1000
    await eventually(lambda: time.time() > sent_at + 28 + 12, 40, what="past the cap")
    assert len(await redactions_of(bob, room, message)) == 1
    assert engine.stats.delayed_fired >= 1
    assert message not in {e["content"]["redacts"] for e in
                           await delayed_events(delayed_hs, _token(handle))}


def _token(handle: BotHandle) -> str:
    assert handle.bot is not None and handle.bot.creds is not None
    return handle.bot.creds.access_token


async def test_a_message_gone_another_way_has_its_delayed_redaction_cancelled(
    delayed_hs, delayed_room,
) -> None:
    """Alice deletes her message herself; later the bot is removed from the room: each
    time the delayed redactions are cancelled, and none fires afterwards."""
    setup = await delayed_room("after-send 20s")
    handle, alice, bob, room = setup.handle, setup.alice, setup.bob, setup.room
    deleted = await alice.send(room, "canary-delayed deleted by alice")
    kept = await alice.send(room, "canary-delayed in a room the bot leaves")
    await eventually(lambda: _armed(handle, deleted, kept), 10, what="both armed")
    token = _token(handle)

    async def targets() -> set[str]:
        return {e["content"]["redacts"] for e in await delayed_events(delayed_hs, token)}

    status, _ = await alice.api(
        "PUT", f"/rooms/{quote(room)}/redact/{quote(deleted)}/mine", {})
    assert status == 200

    async def cancelled() -> bool:
        return deleted not in await targets()

    await eventually(cancelled, 15, what="the deleted message's delayed redaction cancelled")
    assert kept in await targets()
    status, _ = await alice.api("POST", f"/rooms/{quote(room)}/kick",
                                {"user_id": handle.user_id})
    assert status == 200

    async def none_left() -> bool:
        return not await targets()

    await eventually(none_left, 15, what="the room's delayed redactions cancelled")
    sent_at = (await bob.event(room, kept))["origin_server_ts"] / 1000
    await eventually(lambda: time.time() > sent_at + 22, 30, what="past the deadline")
    assert [r["sender"] for r in await redactions_of(bob, room, deleted)] == [alice.user_id]
    assert await redactions_of(bob, room, kept) == []


async def test_more_messages_than_the_account_may_schedule(delayed_room) -> None:
    """3 delayed events per account: the rest are redacted by Lethe itself, each on
    time, and none twice."""
    setup = await delayed_room(f"after-send {TIMER_S}s")
    handle, alice, bob, room = setup.handle, setup.alice, setup.bob, setup.room
    watch = Watch(bob)
    sent = [await alice.send(room, f"canary-delayed many {i}") for i in range(6)]
    engine = _engine(handle)
    await eventually(all_redacted(bob, room, *sent), TIMER_S + 30, what="all redacted")
    for event_id in sent:
        late = await watch.late_ms(room, event_id, TIMER_S)
        assert 0 <= late < 3000, f"{event_id} redacted {late} ms after its deadline"
        assert len(await redactions_of(bob, room, event_id)) == 1
    stats = engine.stats
    assert stats.delayed_fired >= 2, "the homeserver redacted the earliest"
    assert stats.done > stats.delayed_fired, "Lethe redacted the others"
    await stays(lambda: one_each(bob, room, sent), 3)


async def test_status_and_metrics_say_delayed_redactions_are_in_use(delayed_room) -> None:
    port = find_free_port()
    setup = await delayed_room("after-send 25s", metrics={"listen": f"127.0.0.1:{port}"})
    handle, alice, room = setup.handle, setup.alice, setup.room
    message = await alice.send(room, "canary-delayed status")
    await eventually(lambda: _armed(handle, message), 10, what="armed")
    await alice.send(room, "!lethe status")
    text = await alice.wait_notice(room, "While I am stopped")
    # The message (the policy notice is pinned, so held out of expiry; the status
    # command is not armed yet).
    assert "the homeserver itself redacts on time the 1 message(s) here" in text
    got = await scrape(port)
    assert got[("lethe_delayed_redactions_in_use", (("state", "in_use"),))] == 1
    assert got[("lethe_delayed_redactions_in_use", (("state", "not_offered"),))] == 0
    assert got[("lethe_delayed_redactions_armed", ())] >= 1
    assert got[("lethe_delayed_redactions_scheduled_total", ())] >= 1


async def test_without_the_features_status_and_doctor_say_what_is_missing(
    synapse, people, lethe, tmp_path,
) -> None:
    """The session's Synapse offers neither: Lethe redacts by itself, as before, and
    says why the homeserver does not."""
    alice, _, room = await bot_room(people, lethe, "bob", policy="after-send 25s")
    await alice.send(room, "!lethe status")
    text = await alice.wait_notice(room, "While I am stopped")
    assert "not offer delayed events (MSC4140) nor redactions sent through /send" in text
    assert "max_event_delay_duration" in text
    await lethe.stop()
    result = await lethe_cli(lethe.config, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    check = checks["delayed redactions"]
    assert check["status"] == "warn" and "not in use" in check["detail"]
    assert "MSC4169" in check["detail"]


async def test_turned_off_in_the_config(delayed_hs, delayed_room) -> None:
    setup = await delayed_room("after-send 12s", redaction={"delayed": "off"})
    handle, alice, bob, room = setup.handle, setup.alice, setup.bob, setup.room
    message = await alice.send(room, "canary-delayed off")
    await alice.send(room, "!lethe status")
    text = await alice.wait_notice(room, "While I am stopped")
    assert "turned off in the config (redaction.delayed: off)" in text
    await eventually(all_redacted(bob, room, message), 30, what="redacted by Lethe")
    assert not await delayed_events(delayed_hs, _token(handle))
    assert _engine(handle).stats.delayed_armed == 0
