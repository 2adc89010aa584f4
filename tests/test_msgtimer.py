"""A message's own timer and `!lethe expire` against a real Synapse, with the bot in
encrypted rooms (matrix-nio clients): bot/engine/msgtimer.py, bot/front/expire.py."""

from __future__ import annotations

import time
from typing import Any

from tests.cli_harness import lethe_cli, out_json, scheduled
from tests.harness import all_redacted, bot_room, eventually, not_redacted, stays

TIMER = "com.beeper.disappearing_timer"


def timed(body: str, kind: str, ms: int) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, TIMER: {"type": kind, "timer": ms}}


async def test_own_timer_shortens_never_lengthens_in_encrypted_room(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 8s")
    sent = time.monotonic()
    short = await alice.send_event(room, "m.room.message",
                                   timed("canary-msgtimer short", "after_send", 2000))
    long = await alice.send_event(room, "m.room.message",
                                  timed("canary-msgtimer long", "after_send", 3_600_000))
    raw = await bob.event(room, short)
    assert raw["type"] == "m.room.encrypted" and TIMER not in raw["content"], \
        "the timer travels inside the encryption"
    await eventually(lambda: bob.is_redacted(room, short), 20, what="short redacted")
    assert 1.5 <= time.monotonic() - sent < 7, "at its own time, before the room's"
    assert not await bob.is_redacted(room, long)
    await eventually(lambda: bob.is_redacted(room, long), 20, what="long redacted")
    assert time.monotonic() - sent >= 7.5, "the room's rule, not the longer own timer"


async def test_own_timer_in_a_room_whose_policy_is_off(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    kept = await alice.send(room, "canary-msgtimer kept")
    sent = time.monotonic()
    timed_id = await alice.send_event(room, "m.room.message",
                                      timed("canary-msgtimer off room", "after_send", 2000))
    await eventually(lambda: bob.is_redacted(room, timed_id), 20, what="timed redacted")
    assert time.monotonic() - sent >= 1.5
    assert await stays(not_redacted(bob, room, kept), 2)


async def test_after_read_by_recipient_in_a_direct_chat(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")  # alice, bob and the bot
    message = await alice.send_event(room, "m.room.message", timed(
        "canary-msgtimer read by bob", "after_read_by_recipient", 2000))
    assert await stays(not_redacted(bob, room, message), 4), "redacted before bob read it"
    read = time.monotonic()
    await bob.receipt(room, message)
    await eventually(lambda: bob.is_redacted(room, message), 20, what="redacted after reading")
    assert time.monotonic() - read >= 1.5


async def test_expire_by_reply_in_an_off_room_and_refused_on_anothers(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    mine = await alice.send(room, "canary-expire alice's own")
    react = await bob.react(room, mine)
    theirs = await alice.send(room, "canary-expire not bob's")

    # bob is no moderator: alice's message is not his to shorten.
    refused = await bob.send(room, "!lethe expire 2s",
                             relates_to={"m.in_reply_to": {"event_id": theirs}})
    await bob.wait_notice(room, "you may only shorten the life of your own messages")
    # A reply naming an event of another room is not found in this one.
    other = await alice.create_room([lethe.user_id])
    elsewhere = await alice.send(other, "canary-expire elsewhere")
    await alice.send(room, "!lethe expire 2s",
                     relates_to={"m.in_reply_to": {"event_id": elsewhere}})
    await alice.wait_notice(room, "cannot find the message you replied to")
    await alice.send(room, "!lethe expire 2s")
    await alice.wait_notice(room, "send it as a reply")

    sent = time.monotonic()
    command = await alice.send(room, "!lethe expire 3s",
                               relates_to={"m.in_reply_to": {"event_id": mine}})
    await alice.wait_notice(room, "and your command will disappear at")
    await eventually(all_redacted(bob, room, mine, command, react), 20,
                     what="target, its reaction and the command redacted")
    assert time.monotonic() - sent >= 2.5
    assert await stays(not_redacted(bob, room, theirs, refused), 1)
    assert not await alice.is_redacted(other, elsewhere)


async def test_moderator_expires_anothers_message_never_lengthens(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 6s")
    message = await bob.send(room, "canary-expire bob's")
    sent = time.monotonic()
    # Longer than the room's rule: changes nothing.
    await alice.send(room, "!lethe expire 1h", relates_to={"m.in_reply_to": {"event_id": message}})
    await alice.wait_notice(room, "its deadline stays")
    await eventually(lambda: bob.is_redacted(room, message), 20, what="redacted by the room")
    assert time.monotonic() - sent >= 5.5
    message2 = await bob.send(room, "canary-expire bob's second")
    sent = time.monotonic()
    await alice.send(room, "!lethe expire 1s", relates_to={"m.in_reply_to": {"event_id": message2}})
    await eventually(lambda: bob.is_redacted(room, message2), 20, what="moderator's expire")
    assert time.monotonic() - sent < 5.5


async def test_pending_shows_which_deadlines_are_their_own(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, "bob", policy="after-send 1h")
    plain = await alice.send(room, "canary-pending plain")
    timed_id = await alice.send_event(room, "m.room.message",
                                      timed("canary-pending timed", "after_send", 600_000))
    target = await alice.send(room, "canary-pending expired by reply")
    await scheduled(lethe, plain, timed_id, target)
    command = await alice.send(room, "!lethe expire 30m",
                               relates_to={"m.in_reply_to": {"event_id": target}})
    await alice.wait_notice(room, "and your command will disappear")

    rows = {r["event_id"]: r for r in out_json(
        await lethe_cli(lethe.config, "pending", room, "--json"))}
    assert rows[plain]["own"] is None
    assert rows[timed_id]["own"] == "timer"
    assert rows[timed_id]["due"] == rows[timed_id]["sent"] + 600_000
    assert rows[target]["own"] == "expire" and rows[command]["own"] == "expire"
    assert rows[target]["due"] == rows[command]["sent"] + 1_800_000
    text = await lethe_cli(lethe.config, "pending", room)
    assert text.exit_code == 0 and "OWN" in text.stdout and "expire" in text.stdout
