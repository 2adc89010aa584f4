"""The bridge and per-message deadlines (bridge/expire.py, bot/engine/msgtimer.py): in
unencrypted rooms the bridge reads a message's own timer and a local member's
`!lethe expire` reply, and applies them silently."""

from __future__ import annotations

import time
from typing import Any

from tests.harness import BotHandle, all_redacted, eventually, not_redacted, stays
from tests.test_bridge import (  # noqa: F401
    _single_redactions,
    bridge_server,
    bridges,
    redactions,
    synapse,
    target,
)

TIMER = "com.beeper.disappearing_timer"


async def clear_room(people: Any, *others: str) -> tuple[Any, list[Any], str]:
    alice = await people("alice")
    members = [await people(name) for name in others]
    room = await alice.create_room([m.user_id for m in members], encrypted=False)
    for member in members:
        await member.join(room)
    return alice, members, room


async def test_bridge_applies_a_message_s_own_timer_only_to_shorten(
        bridges, people) -> None:  # noqa: F811  (imported fixtures)
    handle = await bridges(default_policy={"mode": "after_send", "timer": "6s"})
    alice, (bob,), room = await clear_room(people, "bob")
    sent = time.monotonic()
    short = await alice.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "canary-bridge-timer short",
        TIMER: {"type": "after_send", "timer": 1500}})
    long = await alice.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "canary-bridge-timer long",
        TIMER: {"type": "after_send", "timer": 3_600_000}})
    await handle.tracked(short, long)
    await eventually(all_redacted(bob, room, short), 20, what="short redacted at its own time")
    assert time.monotonic() - sent < 5.5
    assert not await bob.is_redacted(room, long)
    await eventually(all_redacted(bob, room, long), 20, what="long redacted at the room's")
    assert time.monotonic() - sent >= 5.5


async def test_bridge_applies_expire_replies_silently(
        bridges, people) -> None:  # noqa: F811  (imported fixtures)
    """In a room whose policy is off: bob (no moderator) may not shorten alice's
    message; alice shortens her own, which goes with its reaction and the command."""
    handle = await bridges()
    alice, (bob,), room = await clear_room(people, "bob")
    mine = await alice.send(room, "canary-bridge-expire alice's")
    react = await bob.react(room, mine)
    refused = await bob.send(room, "!lethe expire 1s",
                             relates_to={"m.in_reply_to": {"event_id": mine}})
    sent = time.monotonic()
    command = await alice.send(room, "!lethe expire 3s",
                               relates_to={"m.in_reply_to": {"event_id": mine}})
    await handle.tracked(mine, command)
    await eventually(all_redacted(bob, room, mine, react, command), 20,
                     what="target, reaction and command redacted by the bridge")
    assert time.monotonic() - sent >= 2.5, "bob's refused command counted"
    senders = {target(r): r["sender"] for r in await redactions(alice, room)}
    assert senders[mine] == alice.user_id and senders[react] == bob.user_id
    assert await stays(not_redacted(bob, room, refused), 1)
    assert handle.bridge is not None and handle.bridge.engine is not None
    assert await handle.bridge.engine.tracked([refused]) == set()


async def test_with_a_lethe_bot_in_the_room_the_bot_does_it_once(
        bridges, people, lethe: BotHandle) -> None:  # noqa: F811  (imported fixtures)
    """A room whose policy is off, with an able Lethe bot: a message's own timer and an
    expire reply are the bot's alone; nothing is redacted twice."""
    handle = await bridges(defer_to=[lethe.user_id])
    alice, (bob,), room = await clear_room(people, "bob")
    await alice.set_power(room, lethe.user_id, 50)
    await alice.invite(room, lethe.user_id)
    await lethe.start()
    await alice.wait_notice(room, "Lethe is here")
    timed_id = await alice.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "canary-bridge-bot timed",
        TIMER: {"type": "after_send", "timer": 2000}})
    mine = await bob.send(room, "canary-bridge-bot bob's")
    command = await bob.send(room, "!lethe expire 2s",
                             relates_to={"m.in_reply_to": {"event_id": mine}})
    await alice.wait_notice(room, "and your command will disappear")
    await eventually(all_redacted(alice, room, timed_id, mine, command), 30,
                     what="all three redacted")
    assert await stays(lambda: _single_redactions(alice, room), 4)
    by_target = {target(r): r["sender"] for r in await redactions(alice, room)}
    assert {by_target[e] for e in (timed_id, mine, command)} == {lethe.user_id}
    assert handle.bridge is not None and handle.bridge.engine is not None
    assert await handle.bridge.engine.tracked([timed_id, mine, command]) == set()


async def test_a_longer_timer_never_escapes_the_bridge_s_default(
        bridges, people, lethe: BotHandle) -> None:  # noqa: F811  (imported fixtures)
    """The bridge's default applies (no policy in the room's state) and a Lethe bot is
    in the room: a message asking for an hour still goes at the default's 4 s, once."""
    handle = await bridges(defer_to=[lethe.user_id],
                           default_policy={"mode": "after_send", "timer": "4s"})
    alice, (bob,), room = await clear_room(people, "bob")
    await alice.set_power(room, lethe.user_id, 50)
    await alice.invite(room, lethe.user_id)
    await lethe.start()
    await alice.wait_notice(room, "Lethe is here")
    sent = time.monotonic()
    long = await bob.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "canary-bridge-default long",
        TIMER: {"type": "after_send", "timer": 3_600_000}})
    await handle.tracked(long)
    await eventually(all_redacted(alice, room, long), 20, what="redacted at the default's time")
    assert time.monotonic() - sent >= 3.5
    assert await stays(lambda: _single_redactions(alice, room), 3)
    assert lethe.bot is not None and lethe.bot.engine is not None
    await eventually(lambda: _untracked(lethe.bot.engine, long), 20,
                     what="the bot forgetting the message the bridge redacted")


async def _untracked(engine: Any, event_id: str) -> bool:
    return await engine.tracked([event_id]) == set()
