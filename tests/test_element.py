"""Lethe as Element users meet it: matrix-js-sdk 43 with its Rust crypto, set up as
Element Web sets it up (users cross-signed, "exclude insecure devices" on, threads,
lazy members), against the real Synapse and the real bot.

Each test would fail on a bot without its own cross-signing identity: Element then
withholds room keys from the bot (so it never sees commands) and shows its notices
as undecryptable.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from bot.devtools.localsynapse import synapse_available
from tests.harness import BotHandle, all_redacted, eventually, stays, write_bot_config
from tests.interop.element import ElementClient

pytestmark = [
    pytest.mark.synapse,
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
]


async def element_room(
    element_people: Any, lethe: BotHandle, *others: str, isolation: str = "signed",
) -> tuple[ElementClient, list[ElementClient], str]:
    """alice (Element) creates an encrypted room with ``others`` (Element) and the bot as
    moderator; everyone joins and alice reads the bot's greeting."""
    alice, *members = await asyncio.gather(
        element_people("alice", isolation=isolation),
        *(element_people(name, isolation=isolation) for name in others))
    if lethe.task is None:
        await lethe.start()
    room = await alice.create_room([*(m.user_id for m in members), lethe.user_id],
                                   power={lethe.user_id: 50})
    for member in members:
        await member.join(room)
    return alice, members, room


async def set_policy(alice: ElementClient, lethe: BotHandle, room: str, policy: str,
                     announced: str | None = None) -> None:
    """An encrypted command from Element, obeyed and announced by the bot."""
    await alice.send_text(room, f"!lethe {policy}")
    notice = await alice.wait_event(
        room, sender=lethe.user_id,
        body_contains=f"changed the retention policy: {announced or policy}", timeout=30)
    assert not notice.decryption_failed


async def test_bot_is_cross_signed_and_element_reads_its_notices_with_no_warning(
        element_people: Any, lethe: BotHandle) -> None:
    alice, _, room = await element_room(element_people, lethe, "bob")
    greeting = await alice.wait_event(room, sender=lethe.user_id, body_contains="Lethe is here",
                                      allow_utd=False, timeout=30)
    assert greeting.encrypted and not greeting.decryption_failed, greeting
    assert greeting.shield_colour == "NONE" and greeting.shield_reason is None, greeting

    trust = await alice.user_verification(lethe.user_id)
    assert trust["has_master_key"], trust
    assert lethe.bot is not None and lethe.bot.creds is not None
    device = trust["devices"][lethe.bot.creds.device_id]
    assert device["signed_by_owner"], trust

    # In Element's older default mode (every device) there is no red shield either.
    carol = await element_people("carol", isolation="all")
    await alice.invite(room, carol.user_id)
    await carol.join(room)
    await set_policy(alice, lethe, room, "after-send 1h")
    seen = await carol.wait_event(room, sender=lethe.user_id,
                                  body_contains="changed the retention policy", timeout=30)
    assert not seen.decryption_failed and seen.shield_colour == "NONE", seen


async def test_encrypted_command_from_element_is_obeyed(
        element_people: Any, lethe: BotHandle) -> None:
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    await set_policy(alice, lethe, room, "after-send 3s")
    message = await alice.send_text(room, "canary-element goes in three seconds")
    sent = time.monotonic()
    await eventually(lambda: bob.is_redacted(room, message), 30,
                     what="Element's message redacted by the bot")
    assert time.monotonic() - sent >= 2.5
    state = await bob.event_state(room, message)
    assert state["redacted_server"] and state["redacted_by"] == lethe.user_id, state


async def test_thread_rules_with_element_receipts(element_people: Any, lethe: BotHandle) -> None:
    """bob reads the thread root in the main timeline (Element's receipt with thread_id
    "main"): the root goes, the unread thread reply stays. bob's receipt inside the
    thread (thread_id = the root) then makes the reply due."""
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    await set_policy(alice, lethe, room, "after-read 3s cap 1h", "after-read 3s, cap 1h")
    root = await alice.send_text(room, "canary-thread root")
    reply = await alice.send_text(room, "canary-thread reply nobody read", thread_root=root)
    await bob.wait_event(room, event_id=reply)

    assert await bob.send_receipt(room, root) == "main"
    await eventually(lambda: bob.is_redacted(room, root), 20, what="root redacted")
    assert await stays(lambda: _not(bob.is_redacted(room, reply)), 4), \
        "the unread thread reply went with its root"

    read_at = time.monotonic()
    assert await bob.send_receipt(room, reply) == root
    await eventually(lambda: bob.is_redacted(room, reply), 20, what="thread reply redacted")
    assert time.monotonic() - read_at >= 2.5, "redacted before its timer ran out"

    # An unthreaded receipt covers the main timeline and every thread at once.
    root2 = await alice.send_text(room, "canary-thread second root")
    reply2 = await alice.send_text(room, "canary-thread second reply", thread_root=root2)
    await bob.wait_event(room, event_id=reply2)
    assert await bob.send_receipt(room, reply2, threaded=False) is None
    await eventually(all_redacted(bob, room, root2, reply2), 20,
                     what="root and reply redacted after an unthreaded receipt")


async def test_receipt_on_a_state_event_counts_across_a_bot_restart(
        element_people: Any, lethe: BotHandle) -> None:
    """Element puts its receipt on the last event it shows: here a topic change."""
    alice, (bob,), room = await element_room(element_people, lethe, "bob")
    await set_policy(alice, lethe, room, "after-read 2s cap 1h", "after-read 2s, cap 1h")
    message = await alice.send_text(room, "canary-restart read after the restart")
    topic = await alice.set_state(room, "m.room.topic", {"topic": "what we talk about"})
    bot = lethe.bot
    assert bot is not None and bot.engine is not None
    store = bot.engine._store

    async def persisted() -> bool:  # stored with the sync token that delivered it
        return await store.event_seq(room, topic) is not None

    await eventually(persisted, 30, what="the topic change persisted by the bot")
    await lethe.stop()
    await lethe.start()

    assert not await bob.is_redacted(room, message)
    read_at = time.monotonic()
    assert await bob.send_receipt(room, topic) == "main"
    await eventually(lambda: bob.is_redacted(room, message), 20,
                     what="message redacted after a receipt on the topic change")
    assert time.monotonic() - read_at >= 1.5


async def test_verified_trust_shares_only_with_cross_signed_devices(
        element_people: Any, people: Any, synapse: Any, tmp_path: Any) -> None:
    handle = BotHandle(write_bot_config(synapse, tmp_path / "verified",
                                        e2ee={"pickle_key": "p" * 32, "trust": "verified"}))
    try:
        alice, _, room = await element_room(element_people, handle)
        dave = await people("dave")  # matrix-nio: its device is not cross-signed
        await alice.invite(room, dave.user_id)
        await dave.join(room)
        await set_policy(alice, handle, room, "after-send 1h")

        pins = json.loads(handle.config.pinned_identities_path.read_text())
        assert alice.user_id in pins
        bot = handle.bot
        assert bot is not None and bot.client is not None
        devices = {d.user_id: d for u in (alice.user_id, dave.user_id)
                   for d in bot.client.device_store.active_user_devices(u)}
        assert devices[alice.user_id].verified
        assert devices[dave.user_id].blacklisted
    finally:
        await handle.stop()


async def _not(check: Any) -> bool:
    return not await check

