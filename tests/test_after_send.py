"""after-send in an encrypted room, end to end against a real Synapse."""

from __future__ import annotations

from tests.harness import bot_room, eventually


async def test_after_send_redacts_in_encrypted_room(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")

    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")
    assert (await alice.get_state(room, "com.beeper.disappearing_timer")) == {
        "type": "after_send", "timer": 3000}

    secret = await alice.send(room, "canary-after-send the plans are in the blue folder")
    event = await bob.event(room, secret)
    assert event["type"] == "m.room.encrypted" and event["content"]
    await eventually(lambda: bob.is_redacted(room, secret), 15, what="redaction seen by bob")
