"""The bridge's part of a visible timer, against a real Synapse with the bridge's
registration loaded: where its own bot is a member with power, it publishes the timers
a room accepts as com.beeper.room_features after a policy change; where its bot is not
in the room, it writes nothing (it pins nothing and leaves the topic alone: it sends no
notices)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import eventually, stays
from tests.test_bridge import (  # noqa: F401  (fixtures)
    LETHE,
    bridge_server,
    bridges,
    encrypted_room,
    synapse,
)

FEATURES = "com.beeper.room_features"


async def test_the_bridge_publishes_the_timers_where_its_bot_may(
        bridges, people) -> None:  # noqa: F811
    handle = await bridges()
    bridge_bot = handle.config.user_id
    alice, _, room = await encrypted_room(people)
    alone, _, elsewhere = await encrypted_room(people)
    await alice.invite(room, bridge_bot)

    async def joined() -> bool:
        status, data = await alice.api("GET", f"/rooms/{quote(room)}/joined_members")
        return status == 200 and bridge_bot in data.get("joined", {})
    await eventually(joined, 20, what="the bridge's bot joining on a local invite")
    await alice.set_power(room, bridge_bot, 50)

    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 90_000}) == 200
    assert await alone.put_state(elsewhere, LETHE,
                                 {"mode": "after_send", "timer_ms": 90_000}) == 200

    async def published() -> dict[str, Any] | None:
        status, event = await alice.api(
            "GET", f"/rooms/{quote(room)}/state/{FEATURES}/", params={"format": "event"})
        return event if status == 200 else None
    await eventually(published, 20, what="the bridge publishing the timers")
    event = await published()
    assert event is not None and event["sender"] == bridge_bot, event
    timer = event["content"]["disappearing_timer"]
    assert 90_000 in timer["timers"] and timer["types"] == ["", "after_read", "after_send"]

    async def nothing_elsewhere() -> bool:
        return await alone.get_state(elsewhere, FEATURES) is None
    assert await stays(nothing_elsewhere, 3), "written where the bridge's bot is not a member"
