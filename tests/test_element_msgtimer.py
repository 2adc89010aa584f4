"""Per-message deadlines as Element users set them (matrix-js-sdk with Rust crypto, set
up as Element Web is; see tests/test_element.py): an encrypted reply
`!lethe expire 5s`, and a message stamped with its own com.beeper.disappearing_timer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.devtools.localsynapse import synapse_available
from tests.harness import BotHandle, all_redacted, eventually, stays
from tests.test_element import element_room

pytestmark = [
    pytest.mark.synapse,
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
]


async def test_expire_by_element_reply_redacts_target_and_command(
        element_people: Any, lethe: BotHandle) -> None:
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    await alice.wait_event(room, sender=lethe.user_id, body_contains="Lethe is here", timeout=30)
    message = await alice.send_text(room, "canary-element-expire goes when I say")
    kept = await alice.send_text(room, "canary-element-expire stays")
    await alice.wait_event(room, event_id=message)
    sent = time.monotonic()
    command = await alice.send_text(room, "!lethe expire 5s", reply_to=message)
    answer = await alice.wait_event(room, sender=lethe.user_id,
                                    body_contains="and your command will disappear", timeout=30)
    assert not answer.decryption_failed
    await eventually(all_redacted(bob, room, message, command), 30,
                     what="the target and the command redacted")
    assert time.monotonic() - sent >= 4.5, "redacted before its deadline"
    state = await bob.event_state(room, message)
    assert state["redacted_server"] and state["redacted_by"] == lethe.user_id, state
    assert await stays(lambda: _not(bob.is_redacted(room, kept)), 1)


async def test_refused_for_a_non_moderator_on_anothers_message(
        element_people: Any, lethe: BotHandle) -> None:
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    message = await alice.send_text(room, "canary-element-expire alice's")
    await bob.wait_event(room, event_id=message)
    await bob.send_text(room, "!lethe expire 2s", reply_to=message)
    await bob.wait_event(room, sender=lethe.user_id,
                         body_contains="only shorten the life of your own messages", timeout=30)
    assert await stays(lambda: _not(bob.is_redacted(room, message)), 3)


async def test_element_message_with_its_own_timer(element_people: Any, lethe: BotHandle) -> None:
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    await alice.wait_event(room, sender=lethe.user_id, body_contains="Lethe is here", timeout=30)
    sent = time.monotonic()
    message = await alice.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "canary-element-timer",
        "com.beeper.disappearing_timer": {"type": "after_send", "timer": 3000}})
    await eventually(lambda: bob.is_redacted(room, message), 30, what="redacted at its own time")
    assert time.monotonic() - sent >= 2.5


async def _not(check: Any) -> bool:
    return not await check
