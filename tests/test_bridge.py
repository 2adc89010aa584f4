"""The appservice bridge against a real Synapse that has loaded the registration
`lethe bridge registration` wrote. The bridge is never a member of the rooms it
enforces; the rooms are end-to-end encrypted.

This module runs its own Synapse (the registration must be loaded at start), so the
session's shared homeserver is left alone. Each test runs a fresh bridge on the same
registration and port, with its own database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from click.testing import CliRunner

from bot.cli.main import main
from bot.devtools.localsynapse import LocalSynapse, find_free_port, synapse_available
from bot.engine.model import EventStatus
from bridge.app import Bridge, RegistrationNotLoaded
from bridge.config import BridgeConfig, load_bridge_config
from bridge.registration import build_registration, load_registration, write_registration
from tests.harness import (
    BotHandle,
    LetheProcess,
    Person,
    all_redacted,
    eventually,
    not_redacted,
    stays,
    unique,
)

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"


@dataclass
class BridgeServer:
    """The module's homeserver and what every bridge config of the module shares."""

    hs: LocalSynapse
    port: int
    registration: Path
    base_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bridge_user(self) -> str:
        return f"@lethe-bridge:{self.hs.server_name}"

    def config(self, directory: Path, **bridge: Any) -> BridgeConfig:
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "homeserver": {"url": self.hs.base_url},
            "data_dir": str(directory / "data"),
            "policy": {"default_cap": "1h"},
            "logging": {"level": "DEBUG"},
            "bridge": {
                "user_id": self.bridge_user,
                "registration": str(self.registration),
                "listen": {"host": "127.0.0.1", "port": self.port},
                **bridge,
            },
        }
        path = directory / "lethe.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_bridge_config(path)


def serve_bridge(base: Path, extra_config: dict[str, Any] | None = None) -> BridgeServer:
    """A Synapse in ``base`` (with ``extra_config`` in its homeserver.yaml) that has
    loaded a bridge registration, started; the caller stops ``.hs``."""
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    hs = LocalSynapse(base / "synapse", extra_config=extra_config)
    server = BridgeServer(hs, find_free_port(), base / "registration.yaml", base)
    config = server.config(base / "registration-writer")
    write_registration(server.registration, build_registration(config, server.url))
    hs.add_app_service_config(server.registration)
    hs.start()
    return server


@pytest.fixture(scope="module")
def bridge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeServer]:
    server = serve_bridge(tmp_path_factory.mktemp("bridge"))
    yield server
    server.hs.stop()


@pytest.fixture(scope="module")
def synapse(bridge_server: BridgeServer) -> LocalSynapse:
    """This module's homeserver in place of the session's, so the shared `people`
    fixture makes people on it."""
    return bridge_server.hs


class BridgeHandle:
    """A bridge running in this event loop, as `lethe bridge run` would run it."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.bridge: Bridge | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    async def start(self) -> Bridge:
        self.bridge = bridge = Bridge(self.config)
        self._stop = asyncio.Event()
        self._task = task = asyncio.create_task(bridge.run_until(self._stop))
        await eventually(lambda: bridge.pinged.is_set() or task.done(), 30,
                         what="the homeserver answering the bridge's ping")
        if task.done():
            task.result()
        return bridge

    async def stop(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 30)
        self._task = None

    async def tracked(self, *event_ids: str) -> None:
        """Wait until the bridge has stored these events (pushed and committed)."""
        assert self.bridge is not None and self.bridge.engine is not None
        store = self.bridge.engine._store

        async def known() -> bool:
            return await store.known_event_ids(event_ids) == set(event_ids)

        await eventually(known, 20, what="the bridge tracking the events")


@pytest.fixture
async def bridges(bridge_server: BridgeServer, tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: ``await bridges(name, **bridge_section)`` -> a started BridgeHandle."""
    made: list[BridgeHandle] = []

    async def make(name: str = "bridge", **bridge: Any) -> BridgeHandle:
        handle = BridgeHandle(bridge_server.config(tmp_path / name, **bridge))
        made.append(handle)
        await handle.start()
        return handle

    yield make
    for handle in made:
        await handle.stop()


# --- helpers -------------------------------------------------------------------


async def encrypted_room(people: Any, *others: str) -> tuple[Person, list[Person], str]:
    alice = await people("alice")
    members = [await people(name) for name in others]
    room = await alice.create_room([m.user_id for m in members])
    for member in members:
        await member.join(room)
    return alice, members, room


async def redactions(person: Person, room: str) -> list[dict[str, Any]]:
    """Every m.room.redaction in the room's history, as ``person`` sees it."""
    status, data = await person.api(
        "GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "500"})
    assert status == 200, data
    return [e for e in data.get("chunk", []) if e.get("type") == "m.room.redaction"]


def target(redaction: dict[str, Any]) -> str:
    return redaction.get("redacts") or redaction["content"]["redacts"]


async def joined_members(person: Person, room: str) -> set[str]:
    status, data = await person.api("GET", f"/rooms/{quote(room)}/joined_members")
    assert status == 200, data
    return set(data["joined"])


async def push(server: BridgeServer, txn_id: str, body: dict[str, Any], *,
               token: str | None = None, legacy: bool = False) -> tuple[int, dict[str, Any]]:
    """PUT a transaction to the bridge as the homeserver would."""
    hs_token = load_registration(server.registration).hs_token if token is None else token
    headers = {} if legacy else {"Authorization": f"Bearer {hs_token}"}
    params = {"access_token": hs_token} if legacy else None
    async with aiohttp.ClientSession() as session, session.put(
        f"{server.url}/_matrix/app/v1/transactions/{quote(txn_id)}",
        json=body, headers=headers, params=params,
    ) as resp:
        return resp.status, await resp.json(content_type=None)


# --- the appservice API --------------------------------------------------------


async def test_hs_token_is_required(bridge_server: BridgeServer, bridges, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    await bridges()
    body = {"events": []}
    for token in ("wrong-" + secrets.token_hex(8), ""):
        status, data = await push(bridge_server, "t-bad", body, token=token)
        assert (status, data.get("errcode")) == (403, "M_FORBIDDEN")
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{bridge_server.url}/_matrix/app/v1/transactions/t-none",
                               json=body) as resp:
            # No credentials at all: 401, as the appservice spec says.
            assert resp.status == 401
            assert (await resp.json())["errcode"] == "M_UNAUTHORIZED"
        async with session.post(f"{bridge_server.url}/_matrix/app/v1/ping", json={},
                                headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 403
        good = {"Authorization": f"Bearer {load_registration(bridge_server.registration).hs_token}"}
        async with session.post(f"{bridge_server.url}/_matrix/app/v1/ping", json={},
                                headers=good) as resp:
            assert resp.status == 200
        for path in ("/users/%40someone%3Alocalhost", "/rooms/%23somewhere%3Alocalhost"):
            async with session.get(f"{bridge_server.url}/_matrix/app/v1{path}",
                                   headers=good) as resp:
                assert resp.status == 404
                assert (await resp.json())["errcode"] == "M_NOT_FOUND"
    # The legacy query parameter is accepted too, and it is not logged.
    status, _ = await push(bridge_server, "t-legacy-" + secrets.token_hex(4), body, legacy=True)
    assert status == 200
    registration = load_registration(bridge_server.registration)
    assert registration.hs_token not in caplog.text
    assert registration.as_token not in caplog.text


async def test_message_text_is_neither_logged_nor_stored(bridges, people, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"})
    alice = await people("alice")
    room = await alice.create_room(encrypted=False)
    canary = f"canary-{secrets.token_hex(8)}"
    message = await alice.send(room, canary)
    await eventually(all_redacted(alice, room, message), 20, what="redaction")
    await handle.stop()
    # alice's own client (nio) logs what it syncs; everything else must not.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("nio"))
    assert "redacted" in logged
    assert canary not in logged
    for path in handle.config.database.path.parent.iterdir():
        assert canary.encode() not in path.read_bytes(), f"{path.name} holds message text"


async def test_registration_not_loaded_is_reported(
    bridge_server: BridgeServer, tmp_path: Path
) -> None:
    config = bridge_server.config(tmp_path / "stranger",
                                  registration=str(tmp_path / "unknown-registration.yaml"))
    write_registration(config.registration_path, build_registration(config, bridge_server.url))
    bridge = Bridge(config)
    with pytest.raises(RegistrationNotLoaded) as err:
        await asyncio.wait_for(bridge.run_until(asyncio.Event()), 30)
    assert "app_service_config_files" in str(err.value)
    assert str(config.registration_path) in str(err.value)
    assert bridge.engine is None, "not stopped cleanly"


# --- enforcement ---------------------------------------------------------------


async def test_after_send_in_encrypted_room_without_membership(
    bridge_server: BridgeServer, bridges, people
) -> None:
    """The server-wide default applies; each redaction is sent as the message's own
    local sender, and the bridge's bot never joins."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "3s"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    from_alice = await alice.send(room, "canary-bridge alice's secret")
    from_bob = await bob.send(room, "canary-bridge bob's secret")
    assert (await bob.event(room, from_alice))["type"] == "m.room.encrypted"
    await handle.tracked(from_alice, from_bob)
    await eventually(all_redacted(alice, room, from_alice, from_bob), 20,
                     what="both messages redacted")
    senders = {target(r): r["sender"] for r in await redactions(alice, room)}
    assert senders == {from_alice: alice.user_id, from_bob: bob.user_id}
    assert bridge_server.bridge_user not in await joined_members(alice, room)
    room_row = await handle.bridge.engine.room(room)
    assert room_row is not None and room_row.redacted_count == 2


async def test_after_read_uses_pushed_receipts(bridges, people) -> None:
    handle = await bridges()
    alice, (bob, carol), room = await encrypted_room(people, "bob", "carol")
    assert await alice.put_state(room, LETHE, {
        "mode": "after_read", "timer_ms": 1000, "cap_ms": 3_600_000, "readers": "all"}) == 200
    first = await alice.send(room, "canary-bridge first")
    second = await alice.send(room, "canary-bridge second")
    await handle.tracked(first, second)

    # bob reads the first publicly, carol the second only privately.
    await bob.receipt(room, first)
    await carol.receipt(room, second, private=True)
    assert await stays(not_redacted(alice, room, first, second), 3), \
        "redacted although carol sent no public receipt"

    await carol.receipt(room, first)
    await eventually(all_redacted(alice, room, first), 20, what="first redacted after both read")
    assert await stays(not_redacted(alice, room, second), 1.5), \
        "second redacted although the public receipts only reach the first"


async def test_beeper_disappearing_timer_set_by_a_user(bridges, people) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    assert await alice.put_state(room, BEEPER, {"type": "after_send", "timer": 2000}) == 200
    message = await bob.send(room, "canary-bridge beeper")
    await handle.tracked(message)
    await eventually(all_redacted(alice, room, message), 20,
                     what="redaction under the Beeper timer, not the 1h default")
    row = await handle.bridge.engine.room(room)
    assert row is not None and row.policy_sender == alice.user_id


async def test_the_mirror_is_written_as_the_local_member_who_set_the_policy(
    bridges, people, caplog
) -> None:
    """m.room.retention follows a policy whose state opts in, written through the
    masquerade path as the member who set it; without the power for it, the log says
    so and the policy still applies; a withdrawn mirror empties only the bridge's own."""
    caplog.set_level(logging.INFO)
    handle = await bridges()
    alice, (bob,), room = await encrypted_room(people, "bob")
    retention = "m.room.retention"

    async def says(content: dict[str, Any]) -> bool:
        return await alice.get_state(room, retention) == content

    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 3_600_000,
                                               "mirror_retention": True}) == 200
    await eventually(lambda: says({"max_lifetime": 3_600_000}), 20,
                     what="the bridge mirroring the policy")
    status, event = await alice.api(
        "GET", f"/rooms/{quote(room)}/state/{retention}/", params={"format": "event"})
    assert status == 200 and event["sender"] == alice.user_id, event
    assert await alice.put_state(room, LETHE, {"mode": "after_read", "timer_ms": 60_000,
                                               "cap_ms": 7_200_000,
                                               "mirror_retention": True}) == 200
    await eventually(lambda: says({"max_lifetime": 7_200_000}), 20,
                     what="the after_read cap mirrored")
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 60_000}) == 200
    await eventually(lambda: says({}), 20, what="the bridge's own mirror withdrawn")

    # Bob may set the policy, not m.room.retention: the policy applies all the same.
    levels = await alice.get_state(room, "m.room.power_levels")
    assert levels is not None
    levels["users"][bob.user_id] = 50
    levels.setdefault("events", {})[retention] = 100
    assert await alice.put_state(room, "m.room.power_levels", levels) == 200
    assert await bob.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 2000,
                                             "mirror_retention": True}) == 200
    message = await bob.send(room, "canary-bridge mirror without power")
    await handle.tracked(message)
    await eventually(all_redacted(alice, room, message), 20,
                     what="the policy enforced although its mirror could not be written")
    assert await says({})
    assert f"{bob.user_id} may not send m.room.retention here (it needs power level 100" \
        in caplog.text


async def test_excluded_rooms_are_left_alone(bridges, people) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"},
                           rooms={"exclude": ["#keep-*"]})
    alice, (bob,), kept_room = await encrypted_room(people, "bob")
    alias = f"#keep-{secrets.token_hex(4)}:{alice.hs.server_name}"
    status, _ = await alice.api("PUT", f"/directory/room/{quote(alias)}", {"room_id": kept_room})
    assert status == 200
    assert await alice.put_state(kept_room, "m.room.canonical_alias", {"alias": alias}) == 200
    other_room = await alice.create_room()
    kept = await bob.send(kept_room, "canary-bridge kept")
    gone = await alice.send(other_room, "canary-bridge gone")
    await eventually(all_redacted(alice, other_room, gone), 20, what="the other room enforced")
    assert await stays(not_redacted(alice, kept_room, kept), 3)
    assert await handle.bridge.engine.room(kept_room) is None


async def test_cli_run_enforces_and_stops_cleanly_on_sigterm(
    bridge_server: BridgeServer, people, tmp_path: Path
) -> None:
    """`lethe bridge run` as a real process: it is reached by the homeserver, enforces,
    keeps message text and tokens out of its output, and exits 0 on SIGTERM."""
    config = bridge_server.config(tmp_path / "cli",
                                  default_policy={"mode": "after_send", "timer": "2s"})
    proc = LetheProcess(["bridge", "run", "-c", str(config.path)], tmp_path / "bridge-run.log")
    await proc.start()
    try:
        await eventually(lambda: "the homeserver reaches the bridge" in proc.output()
                         or proc.returncode is not None, 30, what="the bridge's ping")
        assert proc.returncode is None, proc.output()
        alice, _, room = await encrypted_room(people)
        canary = f"canary-{secrets.token_hex(8)}"
        unencrypted = await alice.create_room(encrypted=False)
        messages = [await alice.send(room, canary), await alice.send(unencrypted, canary)]
        await eventually(all_redacted(alice, room, messages[0]), 20, what="redaction")
        await eventually(all_redacted(alice, unencrypted, messages[1]), 20, what="redaction")
        code = await proc.signal(signal.SIGTERM, timeout=15)
        output = proc.output()
        assert code == 0, output
        assert "Traceback" not in output
        assert any(line.endswith("bridge.cli: stopped") for line in output.splitlines()), \
            output[-2000:]
        registration = load_registration(bridge_server.registration)
        for secret in (canary, registration.as_token, registration.hs_token):
            assert secret not in output
    finally:
        await proc.close()


# --- transactions over aiohttp's default 1 MiB -----------------------------------------

MIB = 1024 * 1024
BIG_BODY = 60_000  # a 60 KB message: its event stays under Synapse's 64 KiB limit


async def _client_api(session: aiohttp.ClientSession, hs: LocalSynapse, token: str,
                      method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with session.request(method, f"{hs.base_url}/_matrix/client/v3{path}", json=body,
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        return data


async def _send(session: aiohttp.ClientSession, hs: LocalSynapse, token: str, room: str,
                body: str) -> str:
    path = f"/rooms/{quote(room)}/send/m.room.message/big-{secrets.token_hex(8)}"
    data = await _client_api(session, hs, token, "PUT", path, {"msgtype": "m.text", "body": body})
    return data["event_id"]


async def test_transaction_over_1_mib_from_real_users_is_stored(
    bridge_server: BridgeServer, bridges
) -> None:
    """Eight local users send 60 KB messages while the homeserver's push to the bridge
    is in flight: Synapse queues them and pushes them in one transaction over 1 MiB.
    aiohttp's default body limit answered that 413, and Synapse resent it forever,
    holding up every later transaction."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    bridge = handle.bridge
    assert bridge is not None
    hs = bridge_server.hs
    users = [await asyncio.to_thread(hs.register, unique("big")) for _ in range(8)]
    async with aiohttp.ClientSession() as session:
        owner = users[0].access_token
        room = (await _client_api(session, hs, owner, "POST", "/createRoom",
                                  {"preset": "public_chat"}))["room_id"]
        for user in users[1:]:
            await _client_api(session, hs, user.access_token, "POST",
                              f"/rooms/{quote(room)}/join", {})
        await handle.tracked(await _send(session, hs, owner, room, "the room is known"))

        # Hold the bridge so that one push is in flight while the big messages queue up.
        async with bridge._lock:
            received = bridge.stats.received
            opener = await _send(session, hs, owner, room, "the push in flight")
            await eventually(lambda: bridge.stats.received > received, 20,
                             what="the homeserver pushing the opener")
            big = await asyncio.gather(*(
                _send(session, hs, user.access_token, room, secrets.token_hex(BIG_BODY // 2))
                for user in users for _ in range(4)))
    await handle.tracked(opener, *big)
    assert bridge.stats.largest_transaction > MIB, bridge.stats


async def test_push_over_1_mib_is_stored(bridge_server: BridgeServer, bridges, people) -> None:
    """Pushed straight to the bridge with the hs_token: 3 MiB, answered 200, every
    event tracked."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    alice, _, room = await encrypted_room(people)
    await handle.tracked(await alice.send(room, "canary-bridge makes the room known"))
    now = int(time.time() * 1000)
    events = [{"type": "m.room.message", "room_id": room, "sender": alice.user_id,
               "event_id": f"$big-{secrets.token_hex(8)}", "origin_server_ts": now,
               "content": {"msgtype": "m.text", "body": secrets.token_hex(BIG_BODY // 2)}}
              for _ in range(56)]
    status, _ = await push(bridge_server, f"big-{secrets.token_hex(6)}", {"events": events})
    assert status == 200
    assert handle.bridge is not None and handle.bridge.stats.largest_transaction > 3 * MIB
    await handle.tracked(*(e["event_id"] for e in events))


# --- durability ----------------------------------------------------------------


async def test_same_transaction_twice_is_processed_once(
    bridge_server: BridgeServer, bridges, people
) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1h"})
    alice, _, room = await encrypted_room(people)
    known = await alice.send(room, "canary-bridge makes the room known")
    await handle.tracked(known)
    store = handle.bridge.engine._store

    now = int(time.time() * 1000)
    message = {"type": "m.room.message", "room_id": room, "sender": alice.user_id,
               "event_id": f"$dup-{secrets.token_hex(6)}", "origin_server_ts": now,
               "content": {"msgtype": "m.text", "body": "x"}}
    txn = f"dup-{secrets.token_hex(6)}"
    assert (await push(bridge_server, txn, {"events": [message]}))[0] == 200
    assert await store.known_event_ids([message["event_id"]]) == {message["event_id"]}
    # Somebody redacts it: the bridge forgets it.
    redaction = {"type": "m.room.redaction", "room_id": room, "sender": alice.user_id,
                 "event_id": f"$red-{secrets.token_hex(6)}", "origin_server_ts": now + 1,
                 "redacts": message["event_id"], "content": {}}
    assert (await push(bridge_server, f"r-{txn}", {"events": [redaction]}))[0] == 200
    assert await store.known_event_ids([message["event_id"]]) == set()

    before = handle.bridge.stats.transactions
    assert (await push(bridge_server, txn, {"events": [message]}))[0] == 200
    assert await store.known_event_ids([message["event_id"]]) == set(), \
        "the re-sent transaction was processed again"
    assert handle.bridge.stats.transactions == before
    assert handle.bridge.stats.duplicates == 1

    # Durably: a restarted bridge still knows the transaction.
    await handle.stop()
    await handle.start()
    assert (await push(bridge_server, txn, {"events": [message]}))[0] == 200
    assert await handle.bridge.engine._store.known_event_ids([message["event_id"]]) == set()
    assert handle.bridge.stats.duplicates == 1


async def test_stopped_bridge_catches_up_when_restarted(bridges, people) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    first = await alice.send(room, "canary-bridge before the stop")
    await handle.tracked(first)

    await handle.stop()
    sent = [await alice.send(room, f"canary-bridge while down {i}") for i in range(3)]
    sent.append(await bob.send(room, "canary-bridge bob while down"))
    # Due after 2 s; nobody redacts them while the bridge is down.
    assert await stays(not_redacted(alice, room, *sent), 3)

    await handle.start()  # the homeserver re-sends what it could not deliver
    await eventually(all_redacted(alice, room, first, *sent), 60,
                     what="everything redacted after the restart")
    senders = Counter(r["sender"] for r in await redactions(alice, room))
    assert senders == Counter({alice.user_id: 4, bob.user_id: 1})


async def test_redactions_are_confirmed_by_their_pushed_echo(bridges, people) -> None:
    """The homeserver pushes the bridge's own redactions back to it; that confirms
    them, so only the first in the room is fetched as a spot check."""
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    sent = [await alice.send(room, f"canary-bridge echo {i}") for i in range(4)]
    sent.append(await bob.send(room, "canary-bridge echo from bob"))
    await eventually(all_redacted(alice, room, *sent), 30, what="all five redacted")
    assert handle.bridge is not None and handle.bridge.engine is not None
    engine = handle.bridge.engine

    async def settled() -> bool:
        return await engine._store.pending_count(room) == 0

    await eventually(settled, 30, what="nothing pending in the room")
    stats = engine.stats
    assert stats.done == len(sent)
    # One spot check; an echo slower than 10 s on a loaded machine may add a fetch.
    assert 1 <= stats.fetches <= 2 and stats.echoed >= len(sent) - 2, stats


# --- power and ownership -------------------------------------------------------


async def test_remote_sender_without_power_is_reported_not_retried(
    bridge_server: BridgeServer, bridges, people, caplog
) -> None:
    """A sender of another server can only be redacted by the bridge's own bot, with
    power. Without it the room is reported and the event parked, not retried; given
    power, the bot joins on invite and the parked event is tried once more."""
    caplog.set_level(logging.INFO)
    metrics_port = find_free_port()
    handle = await bridges(default_policy={"mode": "after_send", "timer": "1s"},
                           metrics={"listen": f"127.0.0.1:{metrics_port}"})
    alice, _, room = await encrypted_room(people)
    known = await alice.send(room, "canary-bridge makes the room known")
    await handle.tracked(known)

    # This homeserver does not federate, so the remote member and message are pushed
    # by hand, as the homeserver would push them.
    remote = "@mallory:elsewhere.example"
    now = int(time.time() * 1000)
    join = {"type": "m.room.member", "room_id": room, "sender": remote, "state_key": remote,
            "event_id": f"$join-{secrets.token_hex(6)}", "origin_server_ts": now,
            "content": {"membership": "join"}}
    message = {"type": "m.room.encrypted", "room_id": room, "sender": remote,
               "event_id": f"$remote-{secrets.token_hex(6)}", "origin_server_ts": now,
               "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA"}}
    assert (await push(bridge_server, f"remote-{secrets.token_hex(6)}",
                       {"events": [join, message]}))[0] == 200
    engine = handle.bridge.engine
    status = await engine.status(room)
    assert status is not None and not status.can_redact_others
    assert "not enforceable" in caplog.text

    async def parked() -> bool:
        event = await engine._store.pending(room)
        return [(e.event_id, e.status) for e in event] == [
            (message["event_id"], EventStatus.PARKED)]

    await eventually(parked, 20, what="the remote message parked")
    assert await stays(parked, 2), "a parked event was picked up again"
    async with engine._store.conn.execute(
        "SELECT attempts FROM events WHERE event_id = ?", (message["event_id"],)
    ) as cur:
        assert (await cur.fetchone())[0] == 0, "a redaction was attempted without power"
    assert room in handle.bridge.stats.cannot_redact_others
    listed = await _bridge_rooms(handle.config, "--json")
    mine = next(r for r in json.loads(listed) if r["room_id"] == room)
    assert (mine["can_enforce"], mine["pending"]) == (False, 1)
    assert "NO (remote senders" in await _bridge_rooms(handle.config)
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
        series = await resp.text()
    assert 'lethe_rooms{enforceable="no",policy="after_send"} 1.0' in series
    assert "lethe_redactions_parked_total 1.0" in series

    # alice gives the bridge's bot power and invites it: it joins, and the parked
    # event is tried (the homeserver does not know it, so it fails for good).
    await alice.set_power(room, bridge_server.bridge_user, 50)
    await alice.invite(room, bridge_server.bridge_user)
    await eventually(lambda: _has(alice, room, bridge_server.bridge_user), 20,
                     what="the bridge's bot joining on the invite")

    async def failed() -> bool:
        return [e.status for e in await engine._store.pending(room)] == [EventStatus.FAILED]

    await eventually(failed, 20, what="the unknown remote event given up on")
    status = await engine.status(room)
    assert status is not None and status.can_redact_others and status.failed == 1
    assert room not in handle.bridge.stats.cannot_redact_others


async def test_message_of_a_local_sender_who_left_goes_through_the_bridge_bot(
    bridge_server: BridgeServer, bridges, people
) -> None:
    """Who has left a room may not redact in it any more; the bridge's bot, with power,
    redacts such a message instead."""
    await bridges(default_policy={"mode": "after_send", "timer": "3s"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    await alice.set_power(room, bridge_server.bridge_user, 50)
    await alice.invite(room, bridge_server.bridge_user)
    await eventually(lambda: _has(alice, room, bridge_server.bridge_user), 20,
                     what="the bridge's bot joining on the invite")
    stays_ = await alice.send(room, "canary-bridge alice stays")
    leaves = await bob.send(room, "canary-bridge bob leaves")
    status, _ = await bob.api("POST", f"/rooms/{quote(room)}/leave", {})
    assert status == 200
    await eventually(all_redacted(alice, room, stays_, leaves), 20, what="both redacted")
    senders = {target(r): r["sender"] for r in await redactions(alice, room)}
    assert senders == {stays_: alice.user_id, leaves: bridge_server.bridge_user}


async def _bridge_rooms(config: BridgeConfig, *args: str) -> str:
    """`lethe bridge rooms`, run as a command (in a thread: it runs its own loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["-c", str(config.path), "bridge", "rooms", *args])
    assert result.exit_code == 0, result.output
    return result.output


async def _has(person: Person, room: str, user_id: str) -> bool:
    return user_id in await joined_members(person, room)


async def test_bot_and_bridge_never_redact_the_same_message(
    bridges, people, lethe: BotHandle
) -> None:
    """Messages sent while the Lethe bot is in the room are the bot's; the others are
    the bridge's. Each message is redacted exactly once."""
    handle = await bridges(defer_to=[lethe.user_id])
    alice, (bob,), room = await encrypted_room(people, "bob")
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 4000}) == 200
    before = [await alice.send(room, "canary-bridge before the bot"),
              await bob.send(room, "canary-bridge bob before the bot")]
    await handle.tracked(*before)

    await alice.set_power(room, lethe.user_id, 50)
    await alice.invite(room, lethe.user_id)
    await lethe.start()
    await alice.wait_notice(room, "Lethe is here")
    after = [await alice.send(room, "canary-bridge with the bot"),
             await bob.send(room, "canary-bridge bob with the bot")]
    await eventually(all_redacted(alice, room, *before, *after), 30,
                     what="every message redacted")
    # Long enough for a second redaction by the other party to show.
    assert await stays(lambda: _single_redactions(alice, room), 5)
    by_target = {target(r): r["sender"] for r in await redactions(alice, room)}
    assert {by_target[e] for e in before} == {alice.user_id, bob.user_id}, \
        "messages from before the bot joined are the bridge's (as their senders)"
    assert {by_target[e] for e in after} == {lethe.user_id}, \
        "messages sent while the bot is in the room are the bot's"


async def _single_redactions(person: Person, room: str) -> bool:
    counts = Counter(target(r) for r in await redactions(person, room))
    assert counts and max(counts.values()) == 1, f"redacted more than once: {counts}"
    return True


# --- a bridge added to a running homeserver -------------------------------------


async def test_rooms_from_before_the_bridge_are_read_from_state(
    bridge_server: BridgeServer, people, tmp_path: Path
) -> None:
    """A bridge registered on a homeserver that already has rooms is pushed only what
    happens afterwards: members and policy come from the room's state, read as a
    local member. (It restarts the module's homeserver, twice.)"""
    alice, (bob, carol), room = await encrypted_room(people, "bob", "carol")
    assert await alice.put_state(room, LETHE, {
        "mode": "after_read", "timer_ms": 1000, "cap_ms": 3_600_000, "readers": "all"}) == 200

    # A second appservice, loaded only now: it has seen nothing of this room.
    port = find_free_port()
    config = bridge_server.config(
        tmp_path / "late", id="lethe-late", user_id=f"@lethe-late:{bridge_server.hs.server_name}",
        registration=str(tmp_path / "late-registration.yaml"),
        listen={"host": "127.0.0.1", "port": port})
    write_registration(config.registration_path,
                       build_registration(config, f"http://127.0.0.1:{port}"))
    bridge_server.hs.add_app_service_config(config.registration_path)
    await asyncio.to_thread(bridge_server.hs.restart)
    handle = BridgeHandle(config)
    await handle.start()
    try:
        message = await alice.send(room, "canary-bridge after the bridge came")
        await handle.tracked(message)
        engine = handle.bridge.engine
        async with engine._store.conn.execute(
            "SELECT user_id FROM members WHERE room_id = ?", (room,)
        ) as cur:
            assert {r[0] for r in await cur.fetchall()} == {
                alice.user_id, bob.user_id, carol.user_id}
        row = await engine.room(room)
        assert row is not None and row.policy_sender == alice.user_id

        await bob.receipt(room, message)
        assert await stays(not_redacted(alice, room, message), 2), \
            "redacted before carol (a member from before the bridge) read it"
        await carol.receipt(room, message)
        await eventually(all_redacted(alice, room, message), 20,
                         what="redaction once every member read it")
    finally:
        await handle.stop()
        # Nothing answers at its URL any more: left registered, its retries hold up the
        # homeserver's pushes to the module's other bridges (30 s gaps were seen).
        bridge_server.hs.remove_app_service_config(config.registration_path)
        await asyncio.to_thread(bridge_server.hs.restart)


async def test_a_powerless_lethe_bot_does_not_switch_the_bridge_off(bridges, people) -> None:
    """bob, with no power, invites a `defer_to` bot that cannot redact: the bridge stays
    responsible. Only once that bot has power (and the room a policy) is it the bot's."""
    alice, (bob,), room = await encrypted_room(people, "bob")
    lethe_like = await people("lethebot")  # stands in for a Lethe bot that is not running
    handle = await bridges(defer_to=[lethe_like.user_id])
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 3000}) == 200
    await bob.invite(room, lethe_like.user_id)
    await lethe_like.join(room)
    ignored = [await alice.send(room, "canary-bridge powerless bot in the room"),
               await bob.send(room, "canary-bridge bob too")]
    await eventually(all_redacted(alice, room, *ignored), 30,
                     what="the bridge still redacting with a powerless bot in the room")
    rooms = json.loads(await _bridge_rooms(handle.config, "--json"))
    assert next(r for r in rooms if r["room_id"] == room)["enforced_by"] is None

    await alice.set_power(room, lethe_like.user_id, 50)

    async def deferred() -> bool:
        found = json.loads(await _bridge_rooms(handle.config, "--json"))
        return any(r["room_id"] == room and r["enforced_by"] == lethe_like.user_id
                   for r in found)

    await eventually(deferred, 20, what="the bridge deferring to the bot with power")
    owned = await alice.send(room, "canary-bridge the bot's now")
    assert await stays(not_redacted(alice, room, owned), 6), \
        "the bridge redacted a message of a bot that can enforce the room"


async def test_the_bridge_refuses_a_policy_change_from_who_may_send_only_one_event(
        bridges, people) -> None:
    """bob may send com.beeper.disappearing_timer but not chat.lethe.policy: his {} is
    refused by the bridge as the bot refuses it, and the policy stays in force."""
    handle = await bridges()
    alice, (bob,), room = await encrypted_room(people, "bob")
    levels = await alice.get_state(room, "m.room.power_levels") or {}
    levels["events"] = {**levels.get("events", {}), BEEPER: 0, LETHE: 50}
    assert await alice.put_state(room, "m.room.power_levels", levels) == 200
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 3000}) == 200
    assert await bob.put_state(room, BEEPER, {}) == 200  # the homeserver lets him
    message = await bob.send(room, "canary-bridge sent after the refused off")
    await handle.tracked(message)
    await eventually(all_redacted(alice, room, message), 30,
                     what="the policy still enforced by the bridge")
