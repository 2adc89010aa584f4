"""The pinned policy notice as an Element user meets it: matrix-js-sdk 43 (Rust crypto,
set up as Element Web sets it up) reads m.room.pinned_events from its synced state as
Element's pinned-messages banner does, fetches and decrypts the pinned notice, and
sees it stay past the room's timer while the bot's other notices expire."""

from __future__ import annotations

from typing import Any

import pytest

from bot.devtools.localsynapse import synapse_available
from tests.harness import BotHandle, eventually, stays
from tests.test_element import element_room, set_policy

pytestmark = [
    pytest.mark.synapse,
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
]


async def test_element_shows_the_pinned_policy_notice_past_the_timer(
        element_people: Any, lethe: BotHandle) -> None:
    alice, _, room = await element_room(element_people, lethe)
    await alice.wait_event(room, sender=lethe.user_id, body_contains="Lethe is here",
                           timeout=30)
    await set_policy(alice, lethe, room, "after-send 5s")
    notice = await alice.wait_event(
        room, sender=lethe.user_id, body_contains="changed the retention policy: after-send 5s",
        timeout=30)

    async def banner_shows_it() -> bool:
        pinned, _ = await alice.pinned_events(room)
        return pinned == [notice.event_id]
    await eventually(banner_shows_it, 30, what="the notice in Element's pinned state")
    _, events = await alice.pinned_events(room)
    assert len(events) == 1, events
    shown = events[0]
    assert shown.encrypted and not shown.decryption_failed, shown
    assert shown.sender == lethe.user_id and shown.msgtype == "m.notice"
    assert shown.body is not None and "after-send 5s" in shown.body
    assert shown.shield_colour == "NONE", "Element shows no warning on the bot's notice"

    # Another notice of the bot's expires on the room's timer; the pinned one stays.
    await alice.send_text(room, "!lethe help")
    helped = await alice.wait_event(room, sender=lethe.user_id,
                                    body_contains="status: the policy, whether", timeout=30)
    await eventually(lambda: alice.is_redacted(room, helped.event_id), 30,
                     what="the help notice expiring")
    async def still_pinned_and_readable() -> bool:
        pinned, events = await alice.pinned_events(room)
        return (pinned == [notice.event_id] and len(events) == 1
                and not events[0].redacted and events[0].body == shown.body)
    assert await stays(still_pinned_and_readable, 3), "the pinned notice outlived the timer"
    assert not await alice.is_redacted(room, notice.event_id)
