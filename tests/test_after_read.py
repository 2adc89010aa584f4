"""after-read in an encrypted room, end to end against a real Synapse.

alice creates the room (and so is its most powerful member), gives the bot power 50,
and sets the policy; bob and carol are the readers. alice never sends receipts: the
sender of a message is not one of its required readers. The bot's own notices are
tracked under the policy too; nobody reads them here, so they only go at their cap.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from tests.harness import BotHandle, Person, bot_room, eventually, not_redacted, stays
from tests.test_restart_privacy import persisted


async def _room(people, lethe: BotHandle, command: str | None = None, expect: str = "") -> tuple[
        Person, Person, Person, str]:
    """alice, bob, carol and the bot in a fresh encrypted room under ``command``."""
    alice, (bob, carol), room = await bot_room(people, lethe, "bob", "carol")
    if command is not None:
        await alice.send(room, command)
        await alice.wait_notice(room, f"changed the retention policy: {expect}")
    return alice, bob, carol, room


async def _tracked(lethe: BotHandle, *events: str) -> None:
    """Wait until the bot tracks these events, so the receipts that follow are not
    racing the bot's sync."""
    assert lethe.bot is not None
    engine = lethe.bot.engine

    async def known() -> bool:
        return await engine.tracked(events) == set(events)

    await eventually(known, 15, what="bot tracking the new events")


async def test_after_read_needs_every_public_receipt(people, lethe) -> None:
    alice, bob, carol, room = await _room(
        people, lethe, "!lethe after-read 2s cap 20s", "after-read 2s, cap 20s, readers all")
    assert (await alice.get_state(room, "com.beeper.disappearing_timer")) == {
        "type": "after_read", "timer": 2000}
    assert (await alice.get_state(room, "chat.lethe.policy")) == {
        "mode": "after_read", "timer_ms": 2000, "cap_ms": 20000, "readers": "all"}

    m1 = await alice.send(room, "canary-after-read first: the key is under the mat")
    m2 = await alice.send(room, "canary-after-read second: the code is 4711")
    assert (await bob.event(room, m1))["type"] == "m.room.encrypted"
    await _tracked(lethe, m1, m2)

    # bob reads m1 publicly; carol reads m2 only privately, which the bot never sees.
    await bob.receipt(room, m1)
    await carol.receipt(room, m2, private=True)
    assert await stays(not_redacted(bob, room, m1, m2), 4), \
        "redacted although carol sent no public receipt"

    # carol's public receipt on m1: now everyone required has read m1, not m2.
    await carol.receipt(room, m1)
    await eventually(lambda: bob.is_redacted(room, m1), 15, what="m1 redacted after both read")
    assert not await bob.is_redacted(room, m2), \
        "m2 redacted although the public receipts only reach m1"
    assert await stays(not_redacted(bob, room, m2), 1.5)
    assert not (await bob.event(room, m1)).get("content")


async def test_after_read_cap_redacts_unread(people, lethe) -> None:
    alice, bob, _carol, room = await _room(
        people, lethe, "!lethe after-read 2s cap 6s", "after-read 2s, cap 6s, readers all")
    sent_at = time.monotonic()
    unread = await alice.send(room, "canary-after-read nobody will read this")
    assert await stays(not_redacted(bob, room, unread), 3), "unread message redacted before its cap"
    await eventually(lambda: bob.is_redacted(room, unread), 15 - (time.monotonic() - sent_at),
                     what="unread message redacted at its cap")
    event = await bob.event(room, unread)
    redaction_ts = event["unsigned"]["redacted_because"]["origin_server_ts"]
    assert redaction_ts - event["origin_server_ts"] >= 6000 - 250, \
        "redacted before the 6 s cap although nobody read it"


async def test_after_read_readers_any(people, lethe) -> None:
    alice, bob, _carol, room = await _room(
        people, lethe, "!lethe after-read 1s cap 1h readers any",
        "after-read 1s, cap 1h, readers any")
    assert (await alice.get_state(room, "chat.lethe.policy"))["readers"] == "any"
    message = await alice.send(room, "canary-after-read anyone may read this")
    await _tracked(lethe, message)
    assert await stays(not_redacted(bob, room, message), 2), "redacted before anyone read it"
    await bob.receipt(room, message)
    await eventually(lambda: bob.is_redacted(room, message), 15,
                     what="redaction after one reader (readers any)")


async def test_after_read_threaded_receipts(people, lethe) -> None:
    alice, bob, carol, room = await _room(
        people, lethe, "!lethe after-read 1s cap 1h", "after-read 1s, cap 1h, readers all")
    root = await alice.send(room, "canary-after-read thread root")
    reply = await alice.thread_reply(room, root, "canary-after-read reply in the thread")
    await _tracked(lethe, root, reply)

    # Receipts in R's thread cover the reply, not the root (which is on the main timeline).
    for reader in (bob, carol):
        await reader.receipt(room, reply, thread_id=root)
    await eventually(lambda: bob.is_redacted(room, reply), 15,
                     what="thread reply redacted after threaded receipts")
    assert await stays(not_redacted(bob, room, root), 3), \
        "thread root redacted by receipts in its thread"

    for reader in (bob, carol):
        await reader.receipt(room, root, thread_id="main")
    await eventually(lambda: bob.is_redacted(room, root), 15,
                     what="thread root redacted after main-timeline receipts")


async def test_after_read_unthreaded_receipt_covers_earlier_thread_reply(people, lethe) -> None:
    alice, bob, carol, room = await _room(people, lethe)
    # The root is sent while the policy is off: it is not tracked, so the reply's fate is
    # its own and not that of its parent.
    root = await alice.send(room, "canary-after-read untracked root")
    await alice.send(room, "!lethe after-read 1s cap 1h")
    await alice.wait_notice(room, "changed the retention policy: after-read 1s, cap 1h")
    reply = await alice.thread_reply(room, root, "canary-after-read reply before the receipt")
    later = await alice.send(room, "canary-after-read later on the main timeline")
    await _tracked(lethe, reply, later)

    # A main-timeline receipt on the later event does not reach into the thread ...
    for reader in (bob, carol):
        await reader.receipt(room, later, thread_id="main")
    await eventually(lambda: bob.is_redacted(room, later), 15,
                     what="main-timeline event redacted after main receipts")
    assert await stays(not_redacted(bob, room, reply), 2.5), \
        "a main-timeline receipt covered a thread reply"
    # ... an unthreaded one covers everything before it, threads included.
    for reader in (bob, carol):
        await reader.receipt(room, later)
    await eventually(lambda: bob.is_redacted(room, reply), 15,
                     what="thread reply redacted after unthreaded receipts on a later event")
    assert not await bob.is_redacted(room, root), "the untracked root was redacted"


async def test_after_read_member_who_leaves_is_not_required(people, lethe) -> None:
    alice, bob, carol, room = await _room(
        people, lethe, "!lethe after-read 1s cap 1h", "after-read 1s, cap 1h, readers all")
    message = await alice.send(room, "canary-after-read carol never reads this")
    await _tracked(lethe, message)
    await bob.receipt(room, message)
    assert await stays(not_redacted(bob, room, message), 3), "redacted while carol had not read it"

    await carol.client.room_leave(room)
    await eventually(lambda: bob.is_redacted(room, message), 15,
                     what="redaction after the last unread member left")


async def test_after_read_receipt_on_a_state_event_counts_after_a_restart(people, lethe) -> None:
    """Element puts its receipt on the last event it shows, often a state event. The
    bot remembers that event's place in the timeline across a restart."""
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    await alice.send(room, "!lethe after-read 2s cap 1h")
    await alice.wait_notice(room, "changed the retention policy: after-read 2s, cap 1h")
    message = await alice.send(room, "canary-after-read read after the restart")
    status, data = await alice.api(
        "PUT", f"/rooms/{quote(room)}/state/m.room.topic/", {"topic": "a new topic"})
    assert status == 200, data
    topic = data["event_id"]
    await _tracked(lethe, message)
    await persisted(lethe, bob, room)  # the topic event is behind the stored sync token
    await lethe.stop()
    await lethe.start()

    assert not await bob.is_redacted(room, message)
    read_ms = time.time() * 1000
    await bob.receipt(room, topic)
    await eventually(lambda: bob.is_redacted(room, message), 20,
                     what="message redacted after a receipt on the topic change")
    event = await bob.event(room, message)
    redacted_ms = event["unsigned"]["redacted_because"]["origin_server_ts"]
    assert redacted_ms - read_ms >= 2000 - 250, "redacted before the timer ran out"
    assert redacted_ms - read_ms < 20_000, "not the receipt: the cap is an hour"
