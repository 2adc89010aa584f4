"""Hostile pushes to the appservice bridge: whatever a transaction holds, the bridge
answers it (so the homeserver's queue never jams on a poisoned transaction), keeps
running and keeps enforcing. The fixtures are the bridge tests' own (a Synapse of
this module's own that loaded the registration)."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp

from bot.matrix.events import MAX_TS
from bridge.registration import load_registration
from tests.harness import all_redacted, eventually
from tests.test_bridge import (  # noqa: F401  (fixtures)
    BridgeServer,
    bridge_server,
    bridges,
    encrypted_room,
    push,
    synapse,
)


def _garbage(room: str, user: str) -> list[tuple[str, Any]]:
    """(what, transaction body) pairs the homeserver would never send, but a bug or a
    remote server's odd event might."""
    event = {"room_id": room, "sender": user, "type": "m.room.message",
             "origin_server_ts": 1_700_000_000_000, "content": {"body": "x"}}
    return [
        ("no events", {}),
        ("events is not a list", {"events": {"a": 1}}),
        ("events of every wrong type", {"events": [None, 1, "x", [], {"room_id": 5}]}),
        ("event without an id", {"events": [dict(event)]}),
        ("timestamp beyond any integer Matrix allows",
         {"events": [{**event, "event_id": "$" + secrets.token_hex(8),
                      "origin_server_ts": MAX_TS * 1024}]}),
        ("negative timestamp", {"events": [{**event, "event_id": "$" + secrets.token_hex(8),
                                            "origin_server_ts": -5}]}),
        ("content of the wrong type", {"events": [{**event, "event_id": "$" + secrets.token_hex(8),
                                                   "content": "text"}]}),
        ("member event with no state key", {"events": [{**event, "event_id": "$m",
                                                        "type": "m.room.member",
                                                        "state_key": None}]}),
        ("policy state of the wrong shape", {"events": [{**event, "event_id": "$p",
                                                         "type": "chat.lethe.policy",
                                                         "state_key": "",
                                                         "content": {"mode": ["x"] * 1000}}]}),
        ("receipts of every wrong shape", {"ephemeral": [
            None, {"type": "m.receipt", "room_id": room, "content": [1]},
            {"type": "m.receipt", "room_id": room, "content": {"$e": {"m.read": {
                user: {"ts": "soon", "thread_id": 5}}}}},
            {"type": "m.receipt", "room_id": room, "content": {"$e": {"m.read": {
                user: {"ts": 2**80}}}}},
        ]}),
        ("a room that does not exist", {"events": [{**event, "room_id": "!nowhere:localhost",
                                                    "event_id": "$n"}]}),
    ]


async def test_poisoned_transactions_are_answered_and_change_nothing(
    bridge_server: BridgeServer, bridges, people,  # noqa: F811  (imported fixtures)
) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "3s"})
    alice, _, room = await encrypted_room(people)
    engine = handle.bridge.engine
    await eventually(lambda: _known(engine, room), 20, what="the bridge seeing the room")
    before = await engine.room(room)
    answers = {}
    for what, body in _garbage(room, alice.user_id):
        status, _ = await push(bridge_server, "t-bad-" + secrets.token_hex(6), body)
        answers[what] = status
    # Acknowledged (nothing to retry) rather than refused: a 5xx would make the homeserver
    # send the same poison again and again, holding up every later transaction.
    assert answers == dict.fromkeys(answers, 200), answers

    # Not JSON, or not an object: a clear 400.
    token = load_registration(bridge_server.registration).hs_token
    async with aiohttp.ClientSession() as session:
        for raw in (b"{not json", b"[1, 2]"):
            async with session.put(
                f"{bridge_server.url}/_matrix/app/v1/transactions/t-raw-{secrets.token_hex(4)}",
                data=raw, headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 400, await resp.text()
                assert (await resp.json())["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")

    # Still enforcing, under the policy it had.
    after = await engine.room(room)
    assert after is not None and before is not None and after.policy == before.policy
    message = await alice.send(room, "an ordinary message after all that")
    await handle.tracked(message)
    await eventually(all_redacted(alice, room, message), 20, what="redaction afterwards")


async def _known(engine: Any, room: str) -> bool:
    return await engine.room(room) is not None
