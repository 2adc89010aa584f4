"""A timer everyone can see, against a real Synapse, in encrypted rooms: the bot pins
its policy notice (m.room.pinned_events), which does not expire while pinned while
every other notice does; replaces it on a change (the old one unpinned, then
redacted by its own rule) and unpins it when the policy is off; keeps the members'
own pins; says in `!lethe status` why it cannot pin; respects a member unpinning it;
publishes the accepted timers (com.beeper.room_features); and, with notices.topic,
keeps the rule in a marked suffix of the topic, a member's text untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bot.devtools.localsynapse import LocalSynapse
from bot.matrix.roomfeatures import DEFAULT_TIMERS_MS
from tests.cli_harness import lethe_cli, out_json, text_fields
from tests.harness import BotHandle, all_redacted, bot_room, eventually, stays, write_bot_config
from tests.test_continuity import lose_database

PINNED = "m.room.pinned_events"
FEATURES = "com.beeper.room_features"
TOPIC = "m.room.topic"


async def notice_id(person: Any, room: str, needle: str) -> str:
    """The event id of the newest notice of the bot ``person`` can read containing
    ``needle`` (waiting for it)."""
    found: list[str] = []

    async def seen() -> bool:
        status, data = await person.api("GET", f"/rooms/{quote(room)}/messages",
                                        params={"dir": "b", "limit": "50"})
        assert status == 200, data
        for raw in data.get("chunk", []):
            text = await person._text_of(raw)
            if text is not None and needle.lower() in text.lower():
                found.append(raw["event_id"])
                return True
        return False

    await eventually(seen, 30, interval=0.3, what=f"a notice containing {needle!r}")
    return found[0]


async def offers(person: Any, room: str, timer_ms: int, offered: bool = True) -> bool:
    features = await person.get_state(room, FEATURES) or {}
    return (timer_ms in features.get("disappearing_timer", {}).get("timers", ())) == offered


async def pinned(person: Any, room: str) -> list[str]:
    return list((await person.get_state(room, PINNED) or {}).get("pinned", []))


def pins_are(person: Any, room: str, expected: list[str]) -> Any:
    async def check() -> bool:
        return await pinned(person, room) == expected
    return check


async def test_the_policy_notice_is_pinned_and_outlives_the_timer(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe)
    # Published on join, before any policy: the timers on offer, off among them.
    await eventually(lambda: offers(alice, room, DEFAULT_TIMERS_MS[0]), 20,
                     what="the timers published on join")
    features = await alice.get_state(room, FEATURES)
    assert features is not None and features["disappearing_timer"] == {
        "types": ["", "after_read", "after_send"], "timers": list(DEFAULT_TIMERS_MS),
        "omit_empty_timer": True}, features
    assert features["reply"] == 2 and features["edit"] == 2, "a plain room's features kept"
    # A member's own pin and topic, made while the policy is off (so nothing expires).
    own = await alice.send(room, "the agenda")
    assert await alice.put_state(room, PINNED, {"pinned": [own]}) == 200
    assert await alice.put_state(room, TOPIC, {"topic": "Planning"}) == 200

    await alice.send(room, "!lethe after-send 6s")
    first = await notice_id(alice, room, "changed the retention policy: after-send 6s")
    await eventually(pins_are(alice, room, [own, first]), 20, what="the notice pinned")
    await eventually(lambda: offers(alice, room, 6000), 20, what="the room's timer offered")
    await alice.send(room, "!lethe help")
    helped = await notice_id(alice, room, "status: the policy, whether I can enforce it")
    await eventually(all_redacted(alice, room, helped), 30, what="an ordinary notice expiring")
    assert not await alice.is_redacted(room, first), "the pinned notice outlived its timer"
    audit = out_json(await lethe_cli(lethe.config, "audit", room, "--grace", "0", "--json"))
    assert first not in {o["event_id"] for o in audit["overdue"]}, "audit: not overdue"
    assert await alice.get_state(room, TOPIC) == {"topic": "Planning"}, "notices.topic is off"

    # A change: the new notice pinned in place of the old one, which then expires by its
    # own rule (already past: at once). The member's pin stays.
    await alice.send(room, "!lethe after-send 5s")
    second = await notice_id(alice, room, "changed the retention policy: after-send 5s")
    await eventually(pins_are(alice, room, [own, second]), 20, what="the new notice pinned")
    await eventually(all_redacted(alice, room, first), 20, what="the old notice redacted")
    async def second_stays() -> bool:
        return not await alice.is_redacted(room, second)
    assert await stays(second_stays, 8), "the new pinned notice outlived its timer"

    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Pinned notice:")
    assert f"Pinned notice: yes ({second}; it does not expire while pinned)" in status, status
    detail = out_json(await lethe_cli(lethe.config, "rooms", "show", room, "--json"))
    assert detail["pinned_notice"] == f"yes ({second}; it does not expire while pinned)"

    # Off: unpinned (the member's pin kept), and redacted by the rule it was sent under.
    await alice.send(room, "!lethe off")
    await alice.wait_notice(room, "changed the retention policy: off")
    await eventually(pins_are(alice, room, [own]), 20, what="the notice unpinned")
    await eventually(all_redacted(alice, room, second), 20, what="the unpinned notice redacted")
    await eventually(lambda: offers(alice, room, 5000, False), 20,
                     what="the old timer no longer offered")


async def test_without_the_power_to_pin_status_says_why(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe)
    levels = await alice.get_state(room, "m.room.power_levels")
    assert levels is not None
    levels.setdefault("events", {})[PINNED] = 100
    assert await alice.put_state(room, "m.room.power_levels", levels) == 200
    await lethe.synced_after()

    await alice.send(room, "!lethe after-send 4s")
    notice = await notice_id(alice, room, "changed the retention policy: after-send 4s")
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Pinned notice:")
    assert ("Pinned notice: NO: I cannot pin the policy notice: my power level is 50 and "
            "m.room.pinned_events needs 100") in status, status
    assert await pinned(alice, room) == []
    shown = text_fields((await lethe_cli(lethe.config, "rooms", "show", room)).stdout)
    assert shown["Pinned notice"].startswith(
        "NO: I cannot pin the policy notice: my power level is 50"), shown
    # Not pinned, so not exempt: it expires like any notice.
    await eventually(all_redacted(alice, room, notice), 30, what="the unpinned notice expiring")


async def test_a_member_unpinning_it_is_respected_until_the_next_change(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe)
    await alice.send(room, "!lethe after-send 1h")
    first = await notice_id(alice, room, "changed the retention policy: after-send 1h")
    await eventually(pins_are(alice, room, [first]), 20, what="the notice pinned")

    assert await alice.put_state(room, PINNED, {"pinned": []}) == 200
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine

    async def released() -> bool:
        return await engine.tracked([first]) == {first} and not await engine.held(room)
    await eventually(released, 20, what="the unpinned notice expiring by its rule again")
    assert await stays(pins_are(alice, room, []), 3), "not pinned again behind her back"
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "a member unpinned it")
    assert "Pinned notice: no: a member unpinned it; the next policy change pins its " \
        "notice again" in status, status

    await alice.send(room, "!lethe after-send 2h")
    second = await notice_id(alice, room, "changed the retention policy: after-send 2h")
    await eventually(pins_are(alice, room, [second]), 20, what="the next notice pinned")
    assert [found.event_id for found in await engine.held(room)] == [second]
    assert await engine.tracked([first]) == {first}


@pytest.fixture
async def topic_lethe(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[BotHandle]:
    handle = BotHandle(write_bot_config(synapse, tmp_path / "topic-bot",
                                        notices={"topic": True}))
    yield handle
    await handle.stop()


async def test_the_rule_in_the_topic_keeps_what_members_wrote(people, topic_lethe) -> None:
    alice, _, room = await bot_room(people, topic_lethe)
    assert await alice.put_state(room, TOPIC, {"topic": "Planning"}) == 200
    await alice.send(room, "!lethe after-send 1h")
    await alice.wait_notice(room, "changed the retention policy: after-send 1h")

    async def topic_is(expected: str) -> bool:
        return (await alice.get_state(room, TOPIC) or {}).get("topic") == expected

    suffix = "⏳ Lethe: after-send 1h (each message is redacted 1h after it was sent)"
    await eventually(lambda: topic_is(f"Planning · {suffix}"), 20, what="the rule added")
    # A member rewrites her part; the next change replaces only the bot's suffix.
    assert await alice.put_state(room, TOPIC, {"topic": f"Planning, v2 · {suffix}"}) == 200
    await alice.send(room, "!lethe after-send 2h")
    await alice.wait_notice(room, "changed the retention policy: after-send 2h")
    await eventually(lambda: topic_is(
        "Planning, v2 · ⏳ Lethe: after-send 2h (each message is redacted 2h after it was sent)"),
        20, what="the rule replaced")
    await alice.send(room, "!lethe off")
    await alice.wait_notice(room, "changed the retention policy: off")
    await eventually(lambda: topic_is("Planning, v2"), 20, what="the rule removed")


async def test_after_a_lost_database_the_bots_old_pin_is_still_replaced(people, lethe) -> None:
    """Room state is the source of truth: a pinned event the bot sent is its notice,
    even when its database no longer holds it."""
    alice, _, room = await bot_room(people, lethe)
    own = await alice.send(room, "the agenda")
    assert await alice.put_state(room, PINNED, {"pinned": [own]}) == 200
    await alice.send(room, "!lethe after-send 1h")
    first = await notice_id(alice, room, "changed the retention policy: after-send 1h")
    await eventually(pins_are(alice, room, [own, first]), 20, what="the notice pinned")
    await lethe.stop()
    lose_database(lethe.config)
    await lethe.start()

    await alice.send(room, "!lethe after-send 2h")
    second = await notice_id(alice, room, "changed the retention policy: after-send 2h")
    await eventually(pins_are(alice, room, [own, second]), 30,
                     what="the old pin replaced, the member's kept")
