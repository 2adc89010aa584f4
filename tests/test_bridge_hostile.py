"""Hostile pushes to the appservice bridge: whatever a transaction holds, the bridge
answers it (so the homeserver's queue never jams on a poisoned transaction), keeps
running and keeps enforcing. The fixtures are the bridge tests' own (a Synapse of
this module's own that loaded the registration)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bot.engine.store import Transaction
from bot.matrix.events import MAX_TS
from bridge.intake import is_id, shown
from bridge.registration import load_registration
from tests.harness import all_redacted, eventually, not_redacted, stays
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

    # Not JSON, or not an object: acknowledged too (test_unusable_transactions_...).
    for raw in (b"{not json", b"[1, 2]"):
        assert await _put_raw(bridge_server, raw) == 200

    # Still enforcing, under the policy it had.
    after = await engine.room(room)
    assert after is not None and before is not None and after.policy == before.policy
    message = await alice.send(room, "an ordinary message after all that")
    await handle.tracked(message)
    await eventually(all_redacted(alice, room, message), 20, what="redaction afterwards")


async def _known(engine: Any, room: str) -> bool:
    return await engine.room(room) is not None


# --- one malformed event or receipt is skipped on its own ------------------------------

# A lone surrogate: JSON may escape one ("\ud800"), Python decodes it, SQLite cannot
# store it as UTF-8. Other homeservers' events reach the bridge through its own.
S = "\ud800"
CANARY = "canary-hostile-content"


@dataclass(frozen=True)
class PushedRoom:
    """A room the bridge knows only from what is pushed to it, its creation included,
    so it never asks the homeserver about it."""

    id: str
    alice: str
    bot: str
    known: str  # a message of alice's, tracked

    def event(self, kind: str = "m.room.message", **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "room_id": self.id, "sender": self.alice,
                 "event_id": "$" + secrets.token_hex(12),
                 "origin_server_ts": int(time.time() * 1000),
                 "content": {"msgtype": "m.text", "body": CANARY}}
        event.update(fields)
        return event

    def state(self, kind: str, content: Any, state_key: Any = "", **fields: Any
              ) -> dict[str, Any]:
        return self.event(kind, state_key=state_key, content=content, **fields)

    def receipts(self, content: Any, **fields: Any) -> dict[str, Any]:
        return {"type": "m.receipt", "room_id": self.id, "content": content, **fields}


@dataclass(frozen=True)
class Hostile:
    events: list[Any] = field(default_factory=list)
    ephemeral: Any = None  # None: the key is left out
    kept: tuple[int, ...] = ()  # indexes of events that are still messages to redact
    logged: bool = True  # the bridge logs a line naming the room or the event


def _r(room: PushedRoom, kind: str, content: Any, **kw: Any) -> Hostile:
    return Hostile([room.state(kind, content, **kw)])


HOSTILE: dict[str, Callable[[PushedRoom], Hostile]] = {
    # m.room.canonical_alias: the reported one, and its relatives.
    "alt_aliases is a number": lambda r: _r(r, "m.room.canonical_alias",
                                            {"alias": "#a:x", "alt_aliases": 5}),
    "alt_aliases is a string": lambda r: _r(r, "m.room.canonical_alias",
                                            {"alias": "#a:x", "alt_aliases": "#b:x"}),
    "alt_aliases is an object": lambda r: _r(r, "m.room.canonical_alias",
                                             {"alt_aliases": {"#c:x": 1}}),
    "alt_aliases of every type": lambda r: _r(r, "m.room.canonical_alias", {
        "alias": "#a:x", "alt_aliases": [5, None, ["#d:x"], {"a": 1}, "#e:x", 2**80]}),
    "alias is a list": lambda r: _r(r, "m.room.canonical_alias", {"alias": ["#f:x"]}),
    "canonical_alias content is text": lambda r: _r(r, "m.room.canonical_alias", "#g:x"),
    # m.room.create
    "create content is text": lambda r: _r(r, "m.room.create", "12"),
    "additional_creators is a number": lambda r: _r(r, "m.room.create", {
        "room_version": "12", "additional_creators": 5}),
    "additional_creators of every type": lambda r: _r(r, "m.room.create", {
        "room_version": "12", "additional_creators": [5, None, "x", f"@{S}:x", r.bot]}),
    "room_version is a number": lambda r: _r(r, "m.room.create", {"room_version": 12}),
    # m.room.power_levels
    "power_levels content is a list": lambda r: _r(r, "m.room.power_levels", [1, 2]),
    "power_levels users is a list": lambda r: _r(r, "m.room.power_levels", {"users": [r.bot]}),
    "power levels beyond canonical JSON": lambda r: _r(r, "m.room.power_levels", {
        "users": {r.bot: 2**80, r.alice: -(2**80)}, "redact": 2**70, "users_default": 2**64}),
    "power levels as long digit strings": lambda r: _r(r, "m.room.power_levels", {
        "users": {r.bot: "9" * 30}, "redact": " 50 ", "state_default": "fifty"}),
    "power levels of every type": lambda r: _r(r, "m.room.power_levels", {
        "users": {r.bot: 50.5, r.alice: None, "@x:y": True, "@z:y": [1], f"@{S}:y": 5},
        "events": [1], "redact": {"a": 1}, "kick": float("inf")}),
    # m.room.member
    "member state_key is a number": lambda r: _r(r, "m.room.member", {"membership": "join"},
                                                 state_key=5),
    "member state_key is null": lambda r: _r(r, "m.room.member", {"membership": "join"},
                                             state_key=None),
    "member state_key is not a user id": lambda r: _r(r, "m.room.member",
                                                      {"membership": "join"}),
    "member state_key with a lone surrogate": lambda r: _r(
        r, "m.room.member", {"membership": "join"}, state_key=f"@{S}:x"),
    "membership is a list": lambda r: _r(r, "m.room.member", {"membership": ["join"]},
                                         state_key="@bob:x"),
    "member content is text": lambda r: _r(r, "m.room.member", "join", state_key="@bob:x"),
    "state_key with a lone surrogate": lambda r: _r(r, "m.room.topic", {"topic": "x"},
                                                    state_key=S),
    # the envelope
    "event_id with a lone surrogate": lambda r: Hostile([r.event(event_id="$" + S)]),
    "event_id is a number": lambda r: Hostile([r.event(event_id=5)]),
    "sender with a lone surrogate": lambda r: Hostile([r.event(sender=f"@{S}:x")]),
    "sender is not a user id": lambda r: Hostile([r.event(sender="alice")]),
    "room_id with a lone surrogate": lambda r: Hostile([r.event(room_id=f"!{S}:x")]),
    "room_id is a number": lambda r: Hostile([r.event(room_id=5)]),
    "type is a number": lambda r: Hostile([r.event(type=5)]),
    "type with a lone surrogate": lambda r: Hostile([r.event(type="m.room.message" + S)]),
    "timestamp is a float": lambda r: Hostile([r.event(origin_server_ts=1.5)]),
    "timestamp is text": lambda r: Hostile([r.event(origin_server_ts="now")]),
    "message with a null state_key": lambda r: Hostile([r.event(state_key=None)]),
    # message contents: still messages, still redacted, their odd parts ignored
    "relation to a lone surrogate": lambda r: Hostile([r.event(content={
        "body": CANARY, "m.relates_to": {"rel_type": "m.annotation", "event_id": "$" + S}})],
        kept=(0,), logged=False),
    "thread root with a lone surrogate": lambda r: Hostile([r.event(content={
        "body": CANARY, "m.relates_to": {"rel_type": "m.thread", "event_id": "$" + S}})],
        kept=(0,), logged=False),
    "relation is a number": lambda r: Hostile([r.event(content={"m.relates_to": 5})],
                                              kept=(0,), logged=False),
    "message content is text": lambda r: Hostile([r.event(content=CANARY)], kept=(0,),
                                                 logged=False),
    "message content is a list": lambda r: Hostile([r.event(content=[CANARY])], kept=(0,),
                                                   logged=False),
    "unsigned is a list": lambda r: Hostile([r.event(unsigned=[1])], kept=(0,), logged=False),
    # redactions
    "redaction of a lone surrogate": lambda r: Hostile([r.event(
        "m.room.redaction", redacts="$" + S, content={"redacts": "$" + S})], logged=False),
    "redaction of a number": lambda r: Hostile([r.event(
        "m.room.redaction", redacts=5, content={"redacts": [r.known]})], logged=False),
    # policies: the engine refuses them itself, with a notice-free log line
    "policy timer beyond any integer": lambda r: Hostile([r.state(
        "chat.lethe.policy", {"mode": "after_send", "timer_ms": 2**80})], logged=False),
    "policy with lone surrogates": lambda r: Hostile([r.state(
        "chat.lethe.policy", {"mode": S, "timer_ms": "1" + S})], logged=False),
    "beeper timer of every wrong type": lambda r: Hostile([r.state(
        "com.beeper.disappearing_timer", {"type": 5, "timer": "x"})], logged=False),
    # receipts
    "receipt on a lone surrogate": lambda r: Hostile(ephemeral=[r.receipts(
        {"$" + S: {"m.read": {r.alice: {"ts": 1}}}})]),
    "receipt by a lone surrogate": lambda r: Hostile(ephemeral=[r.receipts(
        {r.known: {"m.read": {f"@{S}:x": {"ts": 1}}}})]),
    "receipt thread with a lone surrogate": lambda r: Hostile(ephemeral=[r.receipts(
        {r.known: {"m.read": {r.alice: {"thread_id": S}}}})]),
    "receipt EDU with a lone surrogate room": lambda r: Hostile(ephemeral=[r.receipts(
        {r.known: {"m.read": {r.alice: {}}}}, room_id=f"!{S}:x")], logged=False),
    "receipts of every shape": lambda r: Hostile(ephemeral=[
        None, 5, [r.known], r.receipts([1]), r.receipts({r.known: [1]}),
        r.receipts({r.known: {"m.read": [1]}}), r.receipts({r.known: {"m.read": {r.alice: [1]}}}),
        r.receipts({r.known: {"m.read": {r.alice: {}}}}, room_id=5)], logged=False),
    "ephemeral is not a list": lambda r: Hostile(ephemeral={"type": "m.receipt"}, logged=False),
}


async def _pushed_room(server: BridgeServer, handle: Any) -> PushedRoom:
    tag = secrets.token_hex(6)
    name = server.hs.server_name
    room = PushedRoom(f"!hostile-{tag}:{name}", f"@alice-{tag}:{name}", server.bridge_user,
                      f"$known-{tag}")
    events = [room.state("m.room.create", {"room_version": "10", "creator": room.alice}),
              room.state("m.room.member", {"membership": "join"}, state_key=room.alice),
              room.event(event_id=room.known)]
    assert (await push(server, f"setup-{tag}", {"events": events}))[0] == 200
    await handle.tracked(room.known)
    return room


@pytest.mark.parametrize("case", HOSTILE.values(), ids=HOSTILE.keys())
async def test_malformed_event_is_skipped_alone(
    bridge_server: BridgeServer, bridges, case: Callable[[PushedRoom], Hostile],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the bridge's HTTP endpoint: the transaction is answered 200, the good
    message beside the malformed event is stored, the malformed one is logged by id
    (never content) and nothing raises; the room goes on working."""
    caplog.set_level(logging.DEBUG)
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    bridge = handle.bridge
    room = await _pushed_room(bridge_server, handle)
    hostile = case(room)
    good = room.event()
    body: dict[str, Any] = {"events": [*hostile.events, good]}
    if hostile.ephemeral is not None:
        body["ephemeral"] = hostile.ephemeral
    txn = f"hostile-{secrets.token_hex(6)}"
    caplog.clear()

    assert (await push(bridge_server, txn, body))[0] == 200
    kept = [hostile.events[i]["event_id"] for i in hostile.kept]
    await handle.tracked(good["event_id"], *kept)
    others = [e.get("event_id") for i, e in enumerate(hostile.events)
              if i not in hostile.kept and isinstance(e, dict)]
    stored = await bridge.engine._store.known_event_ids([i for i in others if is_id(i, "$")])
    assert not stored, "a malformed event was put on a schedule"

    records = [r for r in caplog.records if not r.name.startswith("nio")]
    assert not [r for r in records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    text = "\n".join(r.getMessage() for r in records)
    assert "Traceback" not in caplog.text and CANARY not in text
    if hostile.logged:
        named = [shown(room.id), *(shown(i) for i in others if isinstance(i, str))]
        assert any(r.levelno == logging.WARNING and any(n in r.getMessage() for n in named)
                   for r in records if r.name.startswith("bridge")), text

    # Stored with its id: sent again, it is acknowledged and not read twice.
    duplicates = bridge.stats.duplicates
    assert (await push(bridge_server, txn, body))[0] == 200
    assert bridge.stats.duplicates == duplicates + 1
    # And the room still works.
    after = room.event()
    assert (await push(bridge_server, f"after-{txn}", {"events": [after]}))[0] == 200
    await handle.tracked(after["event_id"])
    status = await bridge.engine.status(room.id)
    assert status is not None and status.pending >= 3


async def test_remote_alt_aliases_of_the_wrong_type_stop_nothing(
    bridge_server: BridgeServer, bridges, people  # noqa: F811
) -> None:
    """The reported case, in real rooms: a remote room admin's m.room.canonical_alias
    with alt_aliases that is not a list (Synapse checks that only for its own
    clients). It made the bridge answer 500 to that transaction forever. Now it is
    answered 200, its valid alias still counts (the room leaves bridge.rooms), and
    what Synapse pushes afterwards is enforced."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"},
                           rooms={"exclude": ["#secret-*"]})
    alice, (bob,), room = await encrypted_room(people, "bob")
    other = await alice.create_room()
    await handle.tracked(await alice.send(room, "canary-bridge makes the room known"))
    name = bridge_server.hs.server_name
    alias = {"type": "m.room.canonical_alias", "state_key": "", "room_id": room,
             "sender": "@admin:elsewhere.example", "event_id": f"$alias-{secrets.token_hex(6)}",
             "origin_server_ts": int(time.time() * 1000),
             "content": {"alias": f"#secret-{secrets.token_hex(3)}:{name}", "alt_aliases": 5}}
    status, _ = await push(bridge_server, f"alias-{secrets.token_hex(6)}", {"events": [alias]})
    assert status == 200
    engine = handle.bridge.engine
    await eventually(lambda: _forgotten(engine, room), 20, what="the room leaving bridge.rooms")

    later = await alice.send(other, "canary-bridge after the odd alias")
    await eventually(all_redacted(alice, other, later), 20, what="redaction afterwards")
    assert await stays(not_redacted(alice, room, await bob.send(room, "kept")), 3)


async def _forgotten(engine: Any, room: str) -> bool:
    return await engine.room(room) is None


# --- transactions that can never be stored ---------------------------------------------


async def _put_raw(server: BridgeServer, raw: bytes, txn: str | None = None) -> int:
    token = load_registration(server.registration).hs_token
    txn = txn or f"t-raw-{secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as session, session.put(
        f"{server.url}/_matrix/app/v1/transactions/{txn}", data=raw,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as resp:
        return resp.status


async def test_unusable_transactions_are_acknowledged(
    bridge_server: BridgeServer, bridges, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Not JSON, not an object, nested beyond what a parser follows, `events` not a
    list: no retry could store them, so each is answered 200 (a 4xx or 5xx makes the
    homeserver resend it forever) with one log line naming it, never its content."""
    caplog.set_level(logging.DEBUG)
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    room = await _pushed_room(bridge_server, handle)
    bodies = {
        "not JSON": b"{" + CANARY.encode(),
        "not UTF-8": b'{"events": "\xff\xfe' + CANARY.encode() + b'"}',
        "an array": json.dumps([CANARY]).encode(),
        "a string": json.dumps(CANARY).encode(),
        "nested too deep": b"[" * 200_000 + CANARY.encode(),
        "events not a list": json.dumps({"events": {"body": CANARY}}).encode(),
        "events and ephemeral not lists": json.dumps({"events": 5, "ephemeral": CANARY}).encode(),
    }
    for what, raw in bodies.items():
        txn = f"unusable-{secrets.token_hex(4)}"
        caplog.clear()
        assert await _put_raw(bridge_server, raw, txn) == 200, what
        lines = [r for r in caplog.records if r.name.startswith("bridge")]
        assert any(txn in r.getMessage() for r in lines), (what, caplog.text)
        assert CANARY not in caplog.text and "Traceback" not in caplog.text, what
    good = room.event()
    assert (await push(bridge_server, "after-unusable", {"events": [good]}))[0] == 200
    await handle.tracked(good["event_id"])


# --- 5xx only when a retry can succeed ---------------------------------------------------


async def test_locked_database_is_answered_503_and_nothing_is_lost(
    bridge_server: BridgeServer, bridges  # noqa: F811
) -> None:
    """A transient failure (another process holds the database's write lock past the
    bridge's busy timeout) gets 503: the homeserver sends it again, and then it is
    stored."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    room = await _pushed_room(bridge_server, handle)
    message = room.event()
    txn = f"locked-{secrets.token_hex(6)}"
    # In a thread: while it waits its turn, the bridge must be free to commit.
    locker = sqlite3.connect(handle.config.database.path, isolation_level=None,
                             check_same_thread=False)
    try:
        await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
        status, data = await push(bridge_server, txn, {"events": [message]})
        assert (status, data.get("errcode")) == (503, "M_UNKNOWN")
    finally:
        locker.close()
    store = handle.bridge.engine._store
    assert not await store.known_event_ids([message["event_id"]])
    assert (await push(bridge_server, txn, {"events": [message]}))[0] == 200
    await handle.tracked(message["event_id"])


async def test_a_bug_meeting_one_event_costs_that_event_only(
    bridge_server: BridgeServer, bridges, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Should the engine raise on some event that passed every check (a bug), the
    transaction is stored piece by piece, leaving out only what fails, and answered
    200. If the engine fails on anything at all, that is not the data: 503."""
    caplog.set_level(logging.INFO)
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    room = await _pushed_room(bridge_server, handle)
    store = handle.bridge.engine._store
    first, poison, last = room.event(), room.event(), room.event()
    insert_events = Transaction.insert_events
    insert_positions = Transaction.insert_positions
    record_txn = Transaction.record_appservice_txn

    async def buggy(tx: Transaction, rows: Any) -> None:
        if any(row.event_id == poison["event_id"] for row in rows):
            raise TypeError("a bug")
        await insert_events(tx, rows)

    Transaction.insert_events = buggy  # type: ignore[method-assign]
    try:
        txn = f"bug-{secrets.token_hex(6)}"
        body = {"events": [first, poison, last],
                "ephemeral": [room.receipts({first["event_id"]: {"m.read": {room.alice: {}}}})]}
        assert (await push(bridge_server, txn, body))[0] == 200
        await handle.tracked(first["event_id"], last["event_id"])
        assert not await store.known_event_ids([poison["event_id"]])
        assert shown(poison["event_id"]) in caplog.text
        duplicates = handle.bridge.stats.duplicates
        assert (await push(bridge_server, txn, body))[0] == 200
        assert handle.bridge.stats.duplicates == duplicates + 1

        async def broken(*args: Any) -> None:
            raise TypeError("the engine is broken")

        Transaction.insert_events = broken  # type: ignore[method-assign]
        Transaction.insert_positions = broken  # type: ignore[method-assign]
        Transaction.record_appservice_txn = broken  # type: ignore[method-assign]
        message = room.event()
        status, _ = await push(bridge_server, f"broken-{txn}", {"events": [message]})
        assert status == 503
    finally:
        Transaction.insert_events = insert_events  # type: ignore[method-assign]
        Transaction.insert_positions = insert_positions  # type: ignore[method-assign]
        Transaction.record_appservice_txn = record_txn  # type: ignore[method-assign]
    assert (await push(bridge_server, f"broken-{txn}", {"events": [message]}))[0] == 200
    await handle.tracked(message["event_id"])


# --- requests without the hs_token --------------------------------------------------------


async def _raw_status(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_refused_requests_get_401_or_403_and_one_log_line(
    bridge_server: BridgeServer, bridges, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """Anyone who can reach the port may send anything: an Authorization header that
    is not UTF-8 got a 500 and a traceback, and every refusal a warning. Now: 401
    without credentials, 403 with wrong ones, and at most one log line a minute."""
    caplog.set_level(logging.DEBUG)
    await bridges()
    token = load_registration(bridge_server.registration).hs_token
    head = b"PUT /_matrix/app/v1/transactions/t-%d%s HTTP/1.1\r\nHost: x\r\n" \
           b"Content-Length: 2\r\nConnection: close\r\n%s\r\n{}"
    cases: list[tuple[bytes, bytes, int]] = [
        (b"", b"", 401),
        (b"", b"Authorization: Bearer \xff\xfe\r\n", 403),
        (b"", b"Authorization: \xc3\x28 \xed\xa0\x80\r\n", 403),
        (b"", b"Authorization: Bearer " + token.encode() + b"\xff\r\n", 403),
        (b"", b"Authorization: Basic " + token.encode() + b"\r\n", 403),
        (b"", b"Authorization: Bearer\r\n", 403),
        (b"", b"Authorization: bearer wrong\r\n", 403),
        (b"?access_token=%ED%A0%80%FF", b"", 403),
        (b"?access_token=" + token.encode() + b"%FF", b"", 403),
    ]
    caplog.clear()
    statuses = []
    for i in range(30):
        for query, header, expected in cases:
            status = await _raw_status(bridge_server.port, head % (i, query, header))
            statuses.append((status, expected))
    assert all(status == expected for status, expected in statuses), statuses
    refusals = [r for r in caplog.records if r.name == "bridge.server"]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text and token not in caplog.text
    # The homeserver itself still gets through, in both spellings.
    assert await _raw_status(bridge_server.port, head % (
        999, b"", b"Authorization: Bearer " + token.encode() + b"\r\n")) == 200
    assert await _raw_status(bridge_server.port, head % (
        998, b"?access_token=" + token.encode(), b"")) == 200
