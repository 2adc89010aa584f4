"""Delayed redactions (issue 14 §3) against a real Synapse that offers them
(the ``delayed_hs`` fixture: delays of at most 30 s, 3 delayed events per account):
the homeserver redacts on time while the bot is stopped, Lethe confirms and counts
each once, and nothing is ever redacted twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person
from bot.engine.engine import Engine
from bot.engine.model import DelayState
from bot.matrix.api import MatrixHttp
from tests.harness import BotHandle, all_redacted, eventually, stays, unique, write_bot_config

TIMER_S = 15


async def _person(hs: LocalSynapse, tmp_path: Path, name: str, made: list[Person]) -> Person:
    person = Person(hs, unique(name), tmp_path / "people" / name)
    await person.start()
    made.append(person)
    return person


async def _room(hs: LocalSynapse, tmp_path: Path, handle: BotHandle, made: list[Person],
                policy: str) -> tuple[Person, Person, str]:
    alice = await _person(hs, tmp_path, "alice", made)
    bob = await _person(hs, tmp_path, "bob", made)
    room = await alice.create_room([bob.user_id, handle.user_id],
                                   power={handle.user_id: 50})
    await bob.join(room)
    if handle.task is None:
        await handle.start()
    await alice.wait_notice(room, "Lethe is here")
    await alice.send(room, f"!lethe {policy}")
    await alice.wait_notice(room, f"changed the retention policy: {policy}")
    return alice, bob, room


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


async def delayed_events(hs: LocalSynapse, token: str) -> list[dict[str, Any]]:
    http = MatrixHttp(hs.base_url, token)
    try:
        reply = await http.delayed_events()
    finally:
        await http.close()
    assert reply.ok, reply
    return list(reply.body.get("delayed_events", []))


async def test_homeserver_redacts_on_time_while_the_bot_is_stopped(delayed_hs, tmp_path) -> None:
    made: list[Person] = []
    handle = BotHandle(write_bot_config(delayed_hs, tmp_path / "bot"))
    try:
        alice, bob, room = await _room(delayed_hs, tmp_path, handle, made,
                                       f"after-send {TIMER_S}s")
        sent = [await alice.send(room, f"canary-delayed message {i}") for i in range(2)]
        await eventually(lambda: _armed(handle, *sent), 10, what="both armed")
        engine = _engine(handle)
        assert (await engine.delayed_status()).in_use
        before = (await engine.room(room)).redacted_count  # type: ignore[union-attr]
        # The bot's own policy notice expires too, and was armed like the messages.
        pending = await engine.pending_count(room)
        assert pending == len(sent) + 1
        await handle.stop()
        stopped_at = time.time()

        # Nothing runs Lethe now; the homeserver redacts each at its deadline.
        await eventually(all_redacted(bob, room, *sent), TIMER_S + 15,
                         what="redacted by the homeserver")
        for event_id in sent:
            message = await bob.event(room, event_id)
            (redaction,) = await redactions_of(bob, room, event_id)
            deadline = message["origin_server_ts"] + TIMER_S * 1000
            late = redaction["origin_server_ts"] - deadline
            assert 0 <= late < 1500, f"redacted {late} ms after its deadline"
            assert redaction["sender"] == handle.user_id
            assert redaction["origin_server_ts"] / 1000 > stopped_at

        await handle.start()
        engine = _engine(handle)

        async def counted() -> bool:
            return await engine.pending_count(room) == 0

        await eventually(counted, 30, what="nothing pending after the restart")
        row = await engine.room(room)
        assert row is not None and row.redacted_count == before + pending
        # Each counted once, as the homeserver's; Lethe itself redacted nothing.
        assert engine.stats.delayed_fired == engine.stats.done == pending
        await stays(lambda: _one_each(bob, room, sent), 3)
        assert engine.stats.delayed_fired == engine.stats.done == pending
        assert not await delayed_events(delayed_hs, handle.bot.creds.access_token)  # type: ignore[union-attr]
    finally:
        await handle.stop()
        for person in made:
            await person.close()


async def _one_each(person: Person, room: str, event_ids: list[str]) -> bool:
    for event_id in event_ids:
        assert len(await redactions_of(person, room, event_id)) == 1, event_id
    return True
