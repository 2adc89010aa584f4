"""The bridge without a homeserver: its config, the registration file and CLI, the
engine changes it relies on (default policy, appservice transaction ids committed
with their events, migration 2) and the ownership rule on pushed events."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sqlite3
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.cli.main import main
from bot.config import ConfigError
from bot.engine.engine import EngineConfig
from bot.engine.model import Marker, MemberChange, Message, PolicyEvent, RoomUpdate
from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, Policy, Readers
from bot.engine.store import MIGRATIONS, SCHEMA_VERSION, Store, Transaction
from bot.matrix.api import HomeserverUnavailable
from bot.matrix.events import clean_receipts
from bot.matrix.roomstate import PowerSource
from bridge.config import RoomFilter, load_bridge_config
from bridge.intake import (
    PushedTransaction,
    Skipped,
    TryLater,
    clean_event,
    clean_power_levels,
    is_transient,
)
from bridge.registration import load_registration
from bridge.rooms import RoomReader, RoomView
from bridge.server import RefusalLog, make_app
from tests.unit.conftest import ALICE, BOB, BOT, ROOM, Harness

H = 3_600_000


def minimal(**bridge: Any) -> dict[str, Any]:
    return {
        "homeserver": {"url": "http://127.0.0.1:8008"},
        "bridge": {"user_id": "@lethe-bridge:example.org", **bridge},
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_bridge_config(path)
    assert str(path) in str(info.value)
    return str(info.value)


# --- config ------------------------------------------------------------------------


def test_minimal_bridge_config_defaults(tmp_path: Path) -> None:
    config = load_bridge_config(write(tmp_path, minimal()))
    assert (config.server_name, config.localpart) == ("example.org", "lethe-bridge")
    assert (config.host, config.port, config.appservice_id) == ("127.0.0.1", 29331, "lethe")
    assert config.registration_path == tmp_path / "lethe-registration.yaml"
    assert config.database.path == tmp_path / "data" / "bridge.db"
    assert config.default_policy == Policy.off()
    assert config.rooms == RoomFilter(("*",), ())
    assert config.defer_to == ()
    assert config.is_local("@alice:example.org")
    assert not config.is_local("@alice:example.org.evil")
    assert not config.is_local("@alice:elsewhere.example")


def test_default_policies(tmp_path: Path) -> None:
    def policy(raw: dict[str, Any]) -> Policy:
        data = minimal(default_policy=raw)
        data["policy"] = {"default_cap": "2d"}
        return load_bridge_config(write(tmp_path, data)).default_policy

    assert policy({"mode": "after_send", "timer": "3d"}) == Policy.after_send(72 * H)
    assert policy({"mode": "after_read", "timer": "1h"}) == Policy.after_read(H, 48 * H)
    assert policy({"mode": "after_read", "timer": "1h", "cap": "1d", "readers": "any"}) == \
        Policy.after_read(H, 24 * H, Readers.ANY)
    assert policy({"mode": "off"}) == Policy.off()


@pytest.mark.parametrize(("bridge", "key"), [
    ({"user_id": "lethe-bridge"}, "bridge.user_id"),
    ({"default_policy": {"mode": "sometimes"}}, "bridge.default_policy.mode"),
    ({"default_policy": {"mode": "after_send"}}, "bridge.default_policy.timer"),
    ({"default_policy": {"mode": "after_send", "timer": "soon"}}, "bridge.default_policy.timer"),
    ({"default_policy": {"mode": "after_send", "timer": "1h", "ttl": 3}},
     "bridge.default_policy.ttl"),
    ({"default_policy": {"mode": "after_read", "timer": "2h", "cap": "1h"}},
     "bridge.default_policy"),
    ({"default_policy": "3d"}, "bridge.default_policy"),
    ({"listen": {"port": 70000}}, "bridge.listen.port"),
    ({"rooms": {"exclude": "#secret:x"}}, "bridge.rooms.exclude"),
    ({"defer_to": "@lethe:x"}, "bridge.defer_to"),
    ({"metrics": {"listen": "0.0.0.0:9465"}}, "bridge.metrics.listen"),
    ({"metrics": {"listen": "9465"}}, "bridge.metrics.listen"),
])
def test_config_errors_name_the_key(tmp_path: Path, bridge: dict[str, Any], key: str) -> None:
    assert f": {key}: " in error(tmp_path, minimal(**bridge))


def test_missing_bridge_section(tmp_path: Path) -> None:
    data = minimal()
    del data["bridge"]
    assert ": bridge: missing section" in error(tmp_path, data)


def test_room_filter() -> None:
    rooms = RoomFilter(("*",), ("#private-*", "!secret:*"))
    assert rooms.allows("!abc:x")
    assert not rooms.allows("!secret:x")
    assert not rooms.allows("!abc:x", ["#public:x", "#private-talk:x"])
    only = RoomFilter(("#team-*",), ())
    assert only.allows("!abc:x", ["#team-a:x"]) and not only.allows("!abc:x")


# --- registration and the CLI --------------------------------------------------------


def test_registration_cli_writes_a_private_file(tmp_path: Path) -> None:
    config = write(tmp_path, minimal(id="lethe-test"))
    runner = CliRunner()
    out = tmp_path / "reg" / "registration.yaml"
    result = runner.invoke(main, ["-c", str(config), "bridge", "registration",
                                  "--url", "http://127.0.0.1:29331", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    data = yaml.safe_load(out.read_text())
    assert data["id"] == "lethe-test"
    assert data["url"] == "http://127.0.0.1:29331"
    assert data["sender_localpart"] == "lethe-bridge"
    assert data["namespaces"]["users"] == [{"exclusive": False, "regex": r"@.*:example\.org"}]
    assert data["receive_ephemeral"] is True and data["rate_limited"] is False
    assert len(data["as_token"]) >= 32 and len(data["hs_token"]) >= 32
    assert data["as_token"] != data["hs_token"]
    assert data["as_token"] not in result.output and data["hs_token"] not in result.output
    assert "app_service_config_files" in result.output
    assert load_registration(out).hs_token == data["hs_token"]

    # Never replaced by accident: the homeserver holds these tokens.
    again = runner.invoke(main, ["-c", str(config), "bridge", "registration",
                                 "--url", "http://127.0.0.1:29331", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert yaml.safe_load(out.read_text())["as_token"] == data["as_token"]
    forced = runner.invoke(main, ["-c", str(config), "bridge", "registration",
                                  "--url", "http://127.0.0.1:29331", "--out", str(out),
                                  "--force"])
    assert forced.exit_code == 0, forced.output
    assert yaml.safe_load(out.read_text())["as_token"] != data["as_token"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert sorted(p.name for p in out.parent.iterdir()) == ["registration.yaml"]


def test_registration_default_path_and_bad_url(tmp_path: Path) -> None:
    config = write(tmp_path, minimal())
    runner = CliRunner()
    bad = runner.invoke(main, ["bridge", "registration", "-c", str(config), "--url", "nowhere"])
    assert bad.exit_code == 2 and "--url" in bad.output
    good = runner.invoke(main, ["-c", str(config), "bridge", "registration",
                                "--url", "http://127.0.0.1:1"])
    assert good.exit_code == 0, good.output
    assert (tmp_path / "lethe-registration.yaml").exists()


def test_run_without_registration_says_how_to_make_one(tmp_path: Path) -> None:
    config = write(tmp_path, minimal())
    result = CliRunner().invoke(main, ["-c", str(config), "bridge", "run"])
    assert result.exit_code == 3
    assert "lethe bridge registration" in result.output
    assert "Traceback" not in result.output


def test_bridge_config_errors_exit_3(tmp_path: Path) -> None:
    config = write(tmp_path, minimal(listen={"port": "http"}))
    result = CliRunner().invoke(main, ["-c", str(config), "bridge", "run"])
    assert result.exit_code == 3 and "bridge.listen.port" in result.output


# --- engine: default policy, transaction ids, migration --------------------------------


async def _harness(tmp_path: Path, policy: Policy) -> Harness:
    return await Harness(tmp_path / "bridge.db",
                         config=EngineConfig(BOT, default_policy=policy)).start()


async def test_default_policy_applies_until_room_state_sets_one(tmp_path: Path) -> None:
    h = await _harness(tmp_path, Policy.after_send(H))
    try:
        result = await h.ingest(Message("$m1", ALICE, h.now()))
        assert [(c.policy, c.initial) for c in result.policy_changes] == \
            [(Policy.after_send(H), True)]
        assert (await h.event("$m1"))["due_at"] == h.now() + H
        # A state event in the room wins, even one that turns retention off.
        await h.ingest(PolicyEvent(BEEPER_EVENT_TYPE, BOB, h.now(), {}))
        await h.ingest(Message("$m2", ALICE, h.now()))
        assert await h.event("$m2") is None
        room = await h.engine.room(ROOM)
        assert room is not None and room.policy == Policy.off() and room.policy_sender == BOB
    finally:
        await h.close()


async def test_changed_default_reaches_rooms_without_policy_state(tmp_path: Path) -> None:
    h = await _harness(tmp_path, Policy.after_send(H))
    await h.ingest(Message("$a", ALICE, h.now()), room="!plain:x")
    await h.ingest(PolicyEvent(POLICY_EVENT_TYPE, BOB, h.now(), Policy.after_send(5000)
                               .to_state()), room="!own:x")
    await h.close()
    h = await _harness(tmp_path, Policy.after_send(2 * H))
    try:
        await h.ingest(Message("$b", ALICE, h.now()), room="!plain:x")
        await h.ingest(Message("$c", ALICE, h.now()), room="!own:x")
        assert (await h.event("$b"))["timer_ms"] == 2 * H
        assert (await h.event("$c"))["timer_ms"] == 5000
        plain = await h.engine.room("!plain:x")
        assert plain is not None and plain.policy == Policy.after_send(2 * H)
    finally:
        await h.close()


async def test_appservice_txn_commits_with_its_events(tmp_path: Path) -> None:
    h = await _harness(tmp_path, Policy.after_send(H))
    try:
        store = h.store
        assert not await store.appservice_txn_done("t1")
        await h.engine.ingest([_update("$m1")], appservice_txn="t1")
        assert await store.appservice_txn_done("t1")
        assert await h.event_ids() == {"$m1"}

        async def broken(tx: Transaction, txn_id: str, now_ms: int) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        record = Transaction.record_appservice_txn
        Transaction.record_appservice_txn = broken  # type: ignore[method-assign]
        try:
            with pytest.raises(sqlite3.OperationalError):
                await h.engine.ingest([_update("$m2")], appservice_txn="t2")
        finally:
            Transaction.record_appservice_txn = record  # type: ignore[method-assign]
        assert await h.event_ids() == {"$m1"}, "events stored without their transaction id"
        assert not await store.appservice_txn_done("t2")
        # Old ids are pruned: the homeserver re-sends only what it has no answer for.
        h.clock.advance(8 * 24 * H)
        await h.engine.ingest([], appservice_txn="t3")
        assert not await store.appservice_txn_done("t1")
        assert await store.appservice_txn_done("t3")
    finally:
        await h.close()


def _update(event_id: str) -> RoomUpdate:
    return RoomUpdate(ROOM, (Message(event_id, ALICE, 1),))


async def test_migration_2_keeps_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO rooms (room_id) VALUES ('!kept:x')")
    conn.close()
    store = await Store.open(path)
    try:
        assert await store.get_room("!kept:x") is not None
        assert not await store.appservice_txn_done("t1")
        async with store.conn.execute("SELECT version FROM schema_version") as cur:
            assert (await cur.fetchone())[0] == SCHEMA_VERSION >= 2
    finally:
        await store.close()


# --- ownership, on pushed events -------------------------------------------------------


def _event(kind: str, sender: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "sender": sender, "event_id": event_id, "origin_server_ts": 1,
            "room_id": ROOM, "content": extra.pop("content", {"body": "x"}), **extra}


def _member(user: str, membership: str, event_id: str) -> dict[str, Any]:
    return _event("m.room.member", user, event_id, state_key=user,
                  content={"membership": membership})


def test_messages_while_a_lethe_bot_is_joined_are_the_bots(tmp_path: Path) -> None:
    """...while that bot can enforce the room: power to redact, and a policy in state."""
    config = load_bridge_config(write(tmp_path, minimal(defer_to=["@lethe:example.org"])))
    reader = RoomReader(config)
    view = RoomView(ROOM, loaded=True, watched=True, power_source=PowerSource(
        create={"creator": "@a:example.org", "room_version": "10"},
        levels={"users": {"@lethe:example.org": 50, "@a:example.org": 100}, "redact": 50}))
    events = [
        _event("chat.lethe.policy", "@a:example.org", "$policy", state_key="",
               content={"mode": "after_send", "timer_ms": 1000}),
        _event("m.room.message", "@a:example.org", "$before"),
        _member("@lethe:example.org", "join", "$botjoin"),
        _event("m.room.message", "@a:example.org", "$during"),
        _member("@lethe:example.org", "leave", "$botleave"),
        _event("m.room.message", "@a:example.org", "$after"),
    ]
    reading = reader.read(view, [], events, [])
    assert reading.update is not None
    kinds = [(type(i).__name__, getattr(i, "event_id", None)) for i in reading.update.timeline]
    assert kinds == [
        ("PolicyEvent", "$policy"),
        ("Message", "$before"), ("MemberChange", "$botjoin"), ("Marker", "$during"),
        ("MemberChange", "$botleave"), ("Message", "$after")]
    assert isinstance(reading.update.timeline[3], Marker)


def test_a_lethe_bot_without_power_or_policy_owns_nothing(tmp_path: Path) -> None:
    config = load_bridge_config(write(tmp_path, minimal(defer_to=["@lethe:example.org"])))
    reader = RoomReader(config)
    admin = {"@a:example.org": 100}
    for power, policy in (({"users": admin}, True),
                          ({"users": {**admin, "@lethe:example.org": 50}}, False)):
        view = RoomView(ROOM, loaded=True, watched=True, power_source=PowerSource(
            create={"creator": "@a:example.org", "room_version": "10"}, levels=power))
        events = [_member("@lethe:example.org", "join", "$botjoin"),
                  _event("m.room.message", "@a:example.org", "$during")]
        if policy:
            events.insert(0, _event("chat.lethe.policy", "@a:example.org", "$policy",
                                    state_key="", content={"mode": "after_send",
                                                           "timer_ms": 1000}))
        reading = reader.read(view, [], events, [])
        assert reading.update is not None
        assert type(reading.update.timeline[-1]).__name__ == "Message", (power, policy)


def test_first_sight_state_leaves_out_what_the_transaction_changes(tmp_path: Path) -> None:
    config = load_bridge_config(write(tmp_path, minimal()))
    reader = RoomReader(config)
    view = RoomView(ROOM)
    state = [_member("@a:example.org", "join", "$a"), _member("@b:example.org", "join", "$b")]
    events = [_event("m.room.message", "@a:example.org", "$m"),
              _member("@b:example.org", "join", "$b")]
    initial = reader.load(view, state, events)
    assert initial == [MemberChange("@a:example.org", True)], \
        "bob joins after the message, in the transaction itself"
    assert view.loaded and view.watched


def test_example_config_bridge_section_loads(tmp_path: Path) -> None:
    """config.example.yaml documents the bridge section commented out; uncommented, it
    must be a valid bridge config."""
    text = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    head, found, tail = text.partition("# bridge:\n")
    assert found, "no bridge section in config.example.yaml"
    lines = [line[2:] if line.startswith("# ") else line for line in tail.splitlines()]
    path = tmp_path / "lethe.yaml"
    path.write_text(head + "bridge:\n" + "\n".join(lines) + "\n")
    config = load_bridge_config(path)
    assert config.default_policy == Policy.after_send(72 * H)
    assert config.defer_to == ("@lethe:example.org",)
    assert config.metrics is not None and config.metrics.port == 9465


# --- what the homeserver pushes: checked, and read whatever its shape --------------------

# Strings as JSON brings them: lone surrogates included (JSON may escape one, SQLite
# cannot store one), and the identifiers the bridge looks for.
_S = "\ud800"
_texts = st.sampled_from([
    "", "@alice:example.org", "@bob:elsewhere.example", "@lethe-bridge:example.org", "$e1",
    "$e2", ROOM, "#a:x", "join", "leave", "invite", "12", "50", " 50 ", "9" * 30, _S,
    f"@{_S}:x", f"${_S}", f"!{_S}:x",
]) | st.text(max_size=6)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats() | _texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
    max_leaves=10,
)
_levels = st.dictionaries(_texts, _json, max_size=3) | _json
_content = st.fixed_dictionaries({}, optional={
    "membership": st.sampled_from(["join", "leave", "invite", "ban"]) | _json,
    "alias": _texts | _json, "alt_aliases": st.lists(_texts | _json, max_size=3) | _json,
    "room_version": st.sampled_from(["1", "10", "12"]) | _json,
    "additional_creators": st.lists(_texts, max_size=3) | _json,
    "users": _levels, "events": _levels, "redact": _json, "users_default": _json,
    "state_default": _json, "redacts": _texts | _json,
    "m.relates_to": st.fixed_dictionaries({}, optional={
        "rel_type": st.sampled_from(["m.thread", "m.replace", "m.annotation"]) | _json,
        "event_id": _texts | _json}) | _json,
    "mode": _json, "timer_ms": _json, "type": _json, "timer": _json,
}) | _json
_pushed_events = st.fixed_dictionaries({
    "type": st.sampled_from([
        "m.room.message", "m.room.member", "m.room.create", "m.room.power_levels",
        "m.room.canonical_alias", "m.room.redaction", "chat.lethe.policy",
        "com.beeper.disappearing_timer"]) | _json,
    "room_id": st.just(ROOM) | _json,
    "event_id": st.sampled_from(["$e1", "$e2", "$e3"]) | _texts | _json,
    "sender": st.sampled_from(["@alice:example.org", "@bob:elsewhere.example"]) | _json,
    "origin_server_ts": st.just(1_700_000_000_000) | _json,
}, optional={
    "state_key": st.sampled_from(["", "@alice:example.org", "@bob:elsewhere.example",
                                  "@lethe-bridge:example.org"]) | _json,
    "content": _content, "redacts": _texts | _json, "unsigned": _json,
}) | _json


def _storable(value: object) -> None:
    """Every value the engine may write to SQLite: UTF-8 text, 64-bit integers."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        assert -(2**63) <= value < 2**63, value
    elif isinstance(value, tuple):
        for item in value:
            _storable(item)
    else:
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            if f.name != "content":  # a policy's content is parsed, never stored
                _storable(getattr(value, f.name))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_pushed_events, max_size=6), st.lists(_pushed_events, max_size=4), _json)
async def test_any_pushed_event_is_read_or_skipped(
    tmp_path: Path, state: list[object], events: list[object], receipts: object
) -> None:
    """Whatever the homeserver pushes (or answers for a room's state): each event is
    skipped by the checks or read without raising, and what reaches the engine is
    storable and stored, its power levels included."""
    config = load_bridge_config(write(tmp_path, minimal(defer_to=["@lethe:example.org"])))
    errors = _Errors()
    logging.getLogger("bridge").addHandler(errors)
    h = await Harness(tmp_path / f"{secrets.token_hex(4)}.db",
                      config=EngineConfig(BOT, default_policy=Policy.after_send(H))).start()
    try:
        cleaned = [[e for e in (clean_event(raw, ROOM) if i == 0 else clean_event(raw)
                                for raw in batch)
                    if not isinstance(e, Skipped) and e["room_id"] == ROOM]
                   for i, batch in enumerate((state, events))]
        reader = RoomReader(config)
        view = RoomView(ROOM)
        initial = reader.load(view, cleaned[0], cleaned[1])
        content = receipts if isinstance(receipts, dict) else {}
        usable, _ = clean_receipts(content)
        reading = reader.read(view, initial, cleaned[1], usable, first_sight=True)
        enforcement = reader.bridge_power(view)
        _storable(enforcement)
        await h.engine.set_power(ROOM, enforcement.can_redact_others, enforcement.bot_level,
                                 enforcement.redact_level)
        if reading.update is not None:
            _storable(reading.update)
            await h.engine.ingest([reading.update], appservice_txn=secrets.token_hex(4))
    finally:
        logging.getLogger("bridge").removeHandler(errors)
        await h.close()
    assert not errors.records, [r.getMessage() for r in errors.records]


@pytest.mark.parametrize(("content", "levels", "ok"), [
    ({"users": {"@a:x": 100, "@b:x": "50"}, "redact": " 75 "},
     {"users": {"@a:x": 100, "@b:x": 50}, "events": {}, "redact": 75}, True),
    ({"users": {"@a:x": 2**80, "@b:x": 50.0, "@c:x": True}, "redact": "9" * 30, "kick": None},
     {"users": {}, "events": {}}, False),
    ({"users": ["@a:x"], "events": {"m.room.name": 2**53 - 1}},
     {"users": {}, "events": {"m.room.name": 2**53 - 1}}, False),
    ([1, 2], {}, False),
])
def test_power_levels_are_read_level_by_level(content: Any, levels: Any, ok: bool) -> None:
    """A level of the wrong type, or beyond canonical JSON's integers (which SQLite could
    not store), counts as absent: the default applies, as in PowerState."""
    assert clean_power_levels(content) == (levels, ok)


def test_clean_event_keeps_messages_and_skips_malformed_state() -> None:
    message = {"type": "m.room.message", "room_id": ROOM, "sender": ALICE, "event_id": "$m",
               "origin_server_ts": 1, "content": {"body": "x", "m.relates_to": {
                   "rel_type": "m.annotation", "event_id": f"${_S}"}}}
    kept = clean_event(message)
    assert isinstance(kept, dict) and "m.relates_to" not in kept["content"]
    assert kept["content"]["body"] == "x"
    assert clean_event({**message, "content": "text"})["content"] == {}  # type: ignore[index]
    member = {**message, "type": "m.room.member", "state_key": f"@{_S}:x",
              "content": {"membership": "join"}}
    assert clean_event(member) == Skipped("no usable state_key", "$m", ROOM)
    assert clean_event({**member, "state_key": 5}) == Skipped("no usable state_key", "$m", ROOM)
    assert clean_event({**member, "state_key": ""}) == \
        Skipped("its state_key is not a user id", "$m", ROOM)
    assert clean_event({**member, "state_key": ALICE, "content": {"membership": 1}}) == \
        Skipped("its membership is not a string", "$m", ROOM)
    assert isinstance(clean_event({**message, "sender": "alice"}), Skipped)
    assert isinstance(clean_event({**message, "room_id": "!elsewhere:x"}, ROOM), Skipped)


# --- the appservice API on its own: the size bound and refusals ---------------------------


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/_matrix/app/v1/transactions"


async def test_transaction_over_the_bound_is_acknowledged_unread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over the bound (here 64 KiB; the bridge's is MAX_TRANSACTION_BYTES), whether it
    says its length or not: 200 (a retry would fail the same way, and the homeserver
    would send nothing else meanwhile), one log line with its id and size, no content.
    Under the bound, it reaches the bridge with its size."""
    caplog.set_level(logging.DEBUG)
    got: list[PushedTransaction] = []

    async def on_transaction(txn: PushedTransaction) -> None:
        got.append(txn)

    runner, url = await _serve(make_app("secret", on_transaction, max_body=64 * 1024))
    canary = "canary-" + secrets.token_hex(4)
    big = json.dumps({"events": [{"body": canary * 1000}] * 20}).encode()
    headers = {"Authorization": "Bearer secret", "Content-Type": "application/json"}

    async def chunked() -> Any:
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    try:
        async with aiohttp.ClientSession() as session:
            for txn, data in (("t-length", big), ("t-chunked", chunked())):
                caplog.clear()
                async with session.put(f"{url}/{txn}", data=data, headers=headers) as resp:
                    assert resp.status == 200
                lines = [r.getMessage() for r in caplog.records if r.name == "bridge.server"]
                assert len(lines) == 1 and txn in lines[0] and "bound" in lines[0], lines
                assert canary not in caplog.text
            assert got == []
            small = json.dumps({"events": []}).encode()
            async with session.put(f"{url}/t-small", data=small, headers=headers) as resp:
                assert resp.status == 200
            assert got == [PushedTransaction("t-small", {"events": []}, len(small))]
    finally:
        await runner.cleanup()


@dataclasses.dataclass(frozen=True)
class _Request:
    method: str = "PUT"
    path: str = "/_matrix/app/v1/transactions/1"
    remote: str = "192.0.2.1"


def test_refusal_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    now = [0.0]
    refusals = RefusalLog(interval_s=60, clock=lambda: now[0])
    for _ in range(500):
        refusals.refused(_Request(), "wrong hs_token")  # type: ignore[arg-type]
        now[0] += 0.01
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "192.0.2.1" in lines[0]
    now[0] = 61.0
    refusals.refused(_Request(path="/x\nforged line"), "no hs_token")  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "(499 more refused since the last such line)" in lines[1]
    assert "\n" not in lines[1], "a path must not start a log line of its own"
    refusals.refused(_Request(), "no hs_token")  # type: ignore[arg-type]
    refusals.flush()
    assert caplog.records[-1].getMessage() == \
        "refused 1 more request(s) without a valid hs_token"


@pytest.mark.parametrize(("exc", "transient"), [
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.DatabaseError("database disk image is malformed"), True),
    (OSError(28, "No space left on device"), True),
    (HomeserverUnavailable("refused"), True),
    (TryLater("stopping"), True),
    (TypeError("unhashable"), False),
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
    (OverflowError("Python int too large to convert to SQLite INTEGER"), False),
    (sqlite3.IntegrityError("constraint"), False),
    (RecursionError(), False),
])
def test_only_transient_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_after_a_restart_the_policy_state_gets_the_power_check(tmp_path: Path) -> None:
    """A policy event the bridge refused in the timeline is in the room's state when it
    restarts: loading the state of a room the engine knows checks it again."""
    config = load_bridge_config(write(tmp_path, minimal()))
    reader = RoomReader(config)
    state = [
        _event("m.room.create", "@a:example.org", "$create", state_key="",
               content={"creator": "@a:example.org", "room_version": "10"}),
        _event("com.beeper.disappearing_timer", "@b:example.org", "$off", state_key="",
               content={}),
        _event("m.room.power_levels", "@a:example.org", "$pl", state_key="",
               content={"users": {"@a:example.org": 100},
                        "events": {"com.beeper.disappearing_timer": 0}}),
    ]
    for known, refused in ((True, True), (False, False)):
        view = RoomView(ROOM)
        items = reader.load(view, state, [], known=known)
        policy = next(i for i in items if isinstance(i, PolicyEvent))
        assert (policy.refused is not None) is refused, known
