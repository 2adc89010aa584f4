"""Smoke tests of the Element harness (tests/interop): matrix-js-sdk, set up as Element Web
sets it up, against the real local Synapse, next to our matrix-nio people.

What they pin down about the harness itself: users come up cross-signed, messages
decrypt with Element's shield, receipts carry Element's thread_id, failures come back as
errors without killing the driver, and undecryptable events report js-sdk's reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.devtools.localsynapse import synapse_available
from tests.harness import Person, eventually
from tests.interop.element import ElementClient, ElementError

pytestmark = [
    pytest.mark.synapse,
    pytest.mark.skipif(not synapse_available(), reason="matrix-synapse is not installed"),
]


def nio_receipts(person: Person, room_id: str, user_id: str) -> dict[str, str]:
    """thread_id -> event_id of ``user_id``'s threaded m.read receipts, as nio synced them."""
    room = person.client.rooms.get(room_id)
    if room is None:
        return {}
    return {thread: r.event_id
            for thread, r in room.threaded_read_receipts.get(user_id, {}).items()}


async def test_element_people_talk_as_element_does(element_people: Any) -> None:
    alice, bob = await asyncio.gather(element_people("alice"), element_people("bob"))
    for client in (alice, bob):
        assert client.info["isolation"] == "signed"
        assert client.info["cross_signing"]["ready"], client.info

    room = await alice.create_room([bob.user_id])
    await bob.join(room)

    root = await alice.send_text(room, "hello from Element")
    seen = await bob.wait_event(room, sender=alice.user_id, body="hello from Element")
    assert seen.event_id == root
    assert seen.encrypted and not seen.decryption_failed
    assert seen.type == "m.room.message" and seen.msgtype == "m.text"
    assert seen.shield_colour == "NONE", seen  # cross-signed sender, identity not verified
    assert seen.shield_reason is None

    # alice is cross-signed as bob's client sees her: master key, device signed by owner.
    trust = await bob.user_verification(alice.user_id)
    assert trust["has_master_key"]
    assert trust["devices"][alice.device_id]["signed_by_owner"], trust

    assert await bob.send_receipt(room, root) == "main"

    # A thread reply as Element's thread composer sends it, and a receipt inside it.
    reply = await bob.send_text(room, "in the thread", thread_root=root)
    in_thread = await alice.wait_event(room, event_id=reply)
    relation = in_thread.content["m.relates_to"]
    assert relation["rel_type"] == "m.thread" and relation["event_id"] == root
    assert relation["is_falling_back"] is True
    assert relation["m.in_reply_to"] == {"event_id": root}
    assert in_thread.thread_root_id == root and in_thread.shield_colour == "NONE"
    assert await alice.send_receipt(room, reply) == root
    assert await alice.send_receipt(room, reply, threaded=False) is None

    state = await bob.event_state(room, root)
    assert state["in_timeline"] and not state["redacted"], state
    await alice.redact(room, reply, reason="smoke test")
    await eventually(lambda: bob.is_redacted(room, reply), 20, what="bob seeing the redaction")
    state = await bob.event_state(room, reply)
    assert state["redacted_server"] and state["redacted_by"] == alice.user_id, state

    # A failing command answers with an error; the driver stays up.
    with pytest.raises(ElementError, match="unknown command"):
        await alice.request("no_such_command")
    with pytest.raises(ElementError, match="join"):
        await alice.join("!nope:localhost")
    assert (await alice.request("whoami"))["user_id"] == alice.user_id


async def test_nio_person_and_element_interoperate(element_people: Any, people: Any) -> None:
    # Our nio people have no cross-signing. Element's default "exclude insecure devices"
    # mode (OnlySignedDevicesIsolationMode) shares no keys with them and refuses their
    # messages, so the Element users talking to nio here use AllDevicesIsolationMode.
    alice, bob, dave = await asyncio.gather(
        element_people("alice", isolation="all"), element_people("bob", isolation="all"),
        element_people("dave"))
    carol: Person = await people("carol")

    room = await alice.create_room([bob.user_id, carol.user_id, dave.user_id])
    await asyncio.gather(bob.join(room), carol.join(room), dave.join(room))

    sent = await alice.send_text(room, "hello nio and Element")
    seen = await bob.wait_event(room, event_id=sent)
    assert seen.body == "hello nio and Element" and seen.shield_colour == "NONE", seen

    async def carol_reads() -> bool:
        return "hello nio and Element" in await carol.notices(room)

    await eventually(carol_reads, 30, interval=0.3, what="nio decrypting Element's message")

    # bob's threaded receipt, as nio (and so Lethe) receives it from the server.
    assert await bob.send_receipt(room, sent) == "main"
    await eventually(lambda: nio_receipts(carol, room, bob.user_id).get("main") == sent, 20,
                     what="bob's threaded receipt in nio's sync")

    # nio -> Element: decrypts, with the red shield of a device its owner never signed.
    from_nio = await carol.send(room, "hello from nio")
    got = await alice.wait_event(room, event_id=from_nio)
    assert got.body == "hello from nio" and not got.decryption_failed
    assert (got.shield_colour, got.shield_reason) == ("RED", "UNSIGNED_DEVICE"), got
    nio_trust = await alice.user_verification(carol.user_id)
    assert not nio_trust["has_master_key"]
    assert not any(d["signed_by_owner"] for d in nio_trust["devices"].values()), nio_trust

    # In Element's default mode the same message is a decryption failure with a reason.
    utd = await dave.wait_event(room, event_id=from_nio, allow_utd=True)
    assert utd.decryption_failed and utd.failure_reason == "UNSIGNED_SENDER_DEVICE", utd


async def test_element_client_reports_a_dead_driver(tmp_path: Path) -> None:
    client = ElementClient(tmp_path / "dead.log", name="dead")
    await client.spawn()
    assert client.pid is not None
    os.kill(client.pid, signal.SIGKILL)
    with pytest.raises(ElementError, match=r"exited|gone"):
        await client.request("whoami", timeout=10)
    await client.close()
