"""The operator's bounds (bot/engine/bounds.py, bot/boundsconfig.py): parsing and
validation, check and clamp, and the engine enforcing a policy from state at the
nearest bound, re-clamped on start when the config's bounds changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.engine.bounds import Bounds, BoundsConfig, Enforcement, RoomRule
from bot.engine.engine import EngineConfig
from bot.engine.model import Message, PolicyEvent
from bot.engine.msgtimer import MessageTimer
from bot.engine.policy import BEEPER_EVENT_TYPE, Mode, Policy, Readers
from bot.engine.reclamp import reclamp_rooms
from bot.matrix.roomfeatures import bounded_capability
from bridge.config import load_bridge_config

from .conftest import ADMIN, ALICE, BOT, ROOM, Harness

S, M, H, D = 1000, 60_000, 3_600_000, 86_400_000
KEY = "0123456789abcdef0123456789abcdef"


def _config(tmp_path: Path, policy: dict[str, Any], bridge: dict[str, Any] | None = None,
            ) -> Path:
    data: dict[str, Any] = {
        "homeserver": {"url": "https://matrix.example.org"},
        "bot": {"user_id": "@lethe:example.org"},
        "e2ee": {"pickle_key": KEY},
        "policy": policy,
    }
    if bridge is not None:
        data["bridge"] = {"user_id": "@lethe-bridge:example.org", **bridge}
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


# --- config -------------------------------------------------------------------


def test_no_bounds_by_default(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, {}), env={})
    assert config.bounds.unbounded
    assert config.bounds.for_room(ROOM).check(Policy.after_send(S)) is None


def test_bounds_and_room_rules_are_read(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, {
        "bounds": {"min_timer": "1m", "max_timer": "30d", "max_cap": "30d",
                   "allow_off": True},
        "rooms": {"!legal:example.org": {"only_off": True},
                  "!*:short.example.org": {"max_timer": "1h"}},
    }), env={})
    default = config.bounds.default
    assert (default.min_timer_ms, default.max_timer_ms, default.max_cap_ms) == (M, 30 * D,
                                                                               30 * D)
    assert config.bounds.for_room("!legal:example.org").only_off
    short = config.bounds.for_room("!a:short.example.org")
    assert (short.min_timer_ms, short.max_timer_ms) == (M, H)  # min_timer inherited
    assert config.bounds.for_room("!other:example.org") is default
    # Each bound names the entry that set it.
    assert "policy.rooms[\"!*:short.example.org\"]" in (short.check(Policy.after_send(D)) or "")
    assert "(policy.bounds)" in (short.check(Policy.after_send(S)) or "")


@pytest.mark.parametrize(("policy", "problem"), [
    ({"bounds": {"min_timer": "1d", "max_timer": "1h"}},
     "policy.bounds: min_timer 1d is longer than max_timer 1h"),
    ({"bounds": {"min_cap": "2d", "max_cap": "1d"}}, "min_cap 2d is longer than max_cap 1d"),
    ({"bounds": {"min_timer": "2d", "max_cap": "1d"}}, "min_timer 2d is longer than max_cap"),
    ({"bounds": {"max_timer": "soon"}}, "policy.bounds.max_timer: unknown duration"),
    ({"bounds": {"max_timer": 5}}, "policy.bounds.max_timer: must be a non-empty string"),
    ({"bounds": {"allow_off": "no"}}, "policy.bounds.allow_off: must be true or false"),
    ({"bounds": {"allow_off": False}}, "allow_off: false needs max_timer"),
    ({"bounds": {"max_tmer": "1d"}}, "policy.bounds.max_tmer: unknown key"),
    ({"bounds": {"only_off": True}}, "policy.bounds.only_off: unknown key"),
    ({"bounds": "1d"}, "policy.bounds: must be a mapping"),
    ({"bounds": {"max_cap": "1d"}}, "policy.default_cap: 1w is longer than max_cap"),
    ({"rooms": {"#legal:example.org": {"only_off": True}}}, "not an alias"),
    ({"rooms": {"!a:example.org": {"only_off": True, "max_timer": "1d"}}},
     "only_off: takes no other bound"),
    ({"rooms": {"!a:example.org": {"only_of": True}}}, "unknown key"),
    ({"rooms": {"!a:example.org": {}}}, "must be a mapping of bounds"),
    ({"rooms": ["!a:example.org"]}, "policy.rooms: must be a mapping"),
    ({"bounds": {"max_timer": "1d"}, "rooms": {"!a:example.org": {"min_timer": "2d"}}},
     "min_timer 2d is longer than max_timer 1d"),
])
def test_bad_bounds_are_refused_naming_the_key(tmp_path: Path, policy: dict[str, Any],
                                               problem: str) -> None:
    assert problem in _error(_config(tmp_path, policy))


def test_bridge_default_policy_must_lie_inside_the_bounds(tmp_path: Path) -> None:
    path = _config(tmp_path, {"bounds": {"max_timer": "1d"}},
                   {"default_policy": {"mode": "after_send", "timer": "7d"}})
    with pytest.raises(ConfigError, match=r"bridge.default_policy: is outside the bounds: "
                                          r"the timer 1w is longer than the bound max_timer"):
        load_bridge_config(path, env={})
    path = _config(tmp_path, {"bounds": {"max_timer": "1d"}},
                   {"default_policy": {"mode": "after_send", "timer": "1d"}})
    assert load_bridge_config(path, env={}).bounds.default.max_timer_ms == D


# --- check and clamp ----------------------------------------------------------

BOUNDED = Bounds(min_timer_ms=M, max_timer_ms=D, min_cap_ms=H, max_cap_ms=2 * D)


@pytest.mark.parametrize(("policy", "enforced", "bound"), [
    (Policy.after_send(S), Policy.after_send(M), "min_timer 1m"),
    (Policy.after_send(7 * D), Policy.after_send(D), "max_timer 1d"),
    (Policy.after_send(H), Policy.after_send(H), None),
    (Policy.after_read(S, 10 * M), Policy.after_read(M, H), "min_timer 1m"),
    (Policy.after_read(H, 7 * D, Readers.ANY), Policy.after_read(H, 2 * D, Readers.ANY),
     "max_cap 2d"),
    (Policy.after_read(7 * D, 7 * D), Policy.after_read(D, 2 * D), "max_timer 1d"),
    (Policy.off(), Policy.off(), None),
])
def test_check_names_the_bound_and_clamp_takes_the_nearest(policy: Policy, enforced: Policy,
                                                         bound: str | None) -> None:
    problem = BOUNDED.check(policy)
    assert (problem is None) == (bound is None)
    if bound is not None:
        assert bound in (problem or "")
    assert BOUNDED.clamp(policy) == enforced
    assert BOUNDED.check(BOUNDED.clamp(policy)) is None


def test_a_cap_lowered_below_the_timer_lowers_the_timer() -> None:
    bounds = Bounds(max_cap_ms=H)
    assert bounds.clamp(Policy.after_read(2 * H, 3 * H)) == Policy.after_read(H, H)


def test_off_not_allowed_is_enforced_at_the_longest_timer() -> None:
    bounds = Bounds(max_timer_ms=30 * D, allow_off=False)
    assert "allow_off false" in (bounds.check(Policy.off()) or "")
    assert bounds.clamp(Policy.off().mirrored(True)) == \
        Policy.after_send(30 * D).mirrored(True)


def test_only_off_refuses_every_active_policy_and_enforces_off() -> None:
    bounds = Bounds(only_off=True, where=(("only_off", 'policy.rooms["!legal:x"]'),))
    for policy in (Policy.after_send(M), Policy.after_read(M, H)):
        assert bounds.check(policy) == ('only off is allowed in this room (only_off, '
                                        'policy.rooms["!legal:x"])')
        assert bounds.clamp(policy) == Policy.off()
    assert bounds.check(Policy.off()) is None
    assert bounds.allowed_timers([M, H]) == ()


def test_allowed_timers_keeps_those_inside() -> None:
    assert BOUNDED.allowed_timers([S, M, H, D, 7 * D]) == (M, H, D)
    assert Bounds().allowed_timers([S, 7 * D]) == (S, 7 * D)


def test_enforcement_says_set_and_enforced() -> None:
    found = Enforcement.of(Policy.after_send(7 * D), BOUNDED)
    assert found.describe() == ("set: after-send 1w, enforced: after-send 1d (bound: the "
                                "timer 1w is longer than the bound max_timer 1d "
                                "(policy.bounds))")
    assert Enforcement.of(Policy.after_send(H), BOUNDED).describe() == \
        Policy.after_send(H).describe()


# --- the engine -----------------------------------------------------------------

LIMITED = BoundsConfig(Bounds(max_timer_ms=H),
                       (RoomRule("!legal:*", Bounds(only_off=True)),))


async def test_state_outside_the_bounds_is_enforced_at_the_bound(tmp_path: Path) -> None:
    h = await Harness(tmp_path / "l.db",
                      config=EngineConfig(bot_user_id=BOT, bounds=LIMITED)).start()
    try:
        event = PolicyEvent(BEEPER_EVENT_TYPE, ADMIN, h.now(),
                            {"type": "after_send", "timer": 7 * D})
        result = await h.ingest(event, Message("$m1", ALICE, h.now()))
        [change] = result.policy_changes
        assert change.policy == Policy.after_send(H)
        assert "max_timer 1h" in (change.bound or "")
        assert (await h.event("$m1"))["due_at"] == h.now() + H  # the bound, not 7d
        assert h.engine is not None
        status = await h.engine.status(ROOM)
        assert status is not None and status.enforcement is not None
        assert status.enforcement.declared == Policy.after_send(7 * D)
        assert status.enforcement.enforced == Policy.after_send(H)
        # In an only-off room, nothing is tracked whatever the state says.
        result = await h.ingest(h.policy_event(Policy.after_send(M)),
                                Message("$m2", ALICE, h.now()), room="!legal:x")
        assert result.policy_changes[0].policy == Policy.off()
        assert await h.event("$m2") is None
    finally:
        await h.close()


async def test_bounds_changed_between_runs_reclamp_new_messages_only(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    h = await Harness(path).start()
    try:
        await h.ingest(h.policy_event(Policy.after_send(D)), Message("$old", ALICE, h.now()))
    finally:
        await h.close()
    h = await Harness(path, clock=h.clock,
                      config=EngineConfig(bot_user_id=BOT, bounds=LIMITED)).start()
    try:
        assert h.engine is not None
        row = await h.engine.room(ROOM)
        assert row is not None and row.policy == Policy.after_send(H)  # re-clamped on start
        await h.ingest(Message("$new", ALICE, h.now()))
        assert (await h.event("$new"))["due_at"] == h.now() + H
        assert (await h.event("$old"))["due_at"] == h.now() + D  # kept its deadline
    finally:
        await h.close()
    # The bound lifted again: the state's own policy is back in force.
    h = await Harness(path, clock=h.clock).start()
    try:
        assert h.engine is not None
        row = await h.engine.room(ROOM)
        assert row is not None and row.policy == Policy.after_send(D)
    finally:
        await h.close()


def test_engine_config_defaults_to_no_bounds() -> None:
    assert EngineConfig(bot_user_id=BOT).bounds.unbounded


# --- one message's own timer -------------------------------------------------


def test_a_messages_own_timer_is_refused_below_min_timer_and_in_only_off_rooms() -> None:
    assert BOUNDED.check_own_timer(M) is None
    assert BOUNDED.check_own_timer(10 * D) is None  # longer never matters: it only shortens
    assert "min_timer 1m" in (BOUNDED.check_own_timer(S) or "")
    assert "only_off" in (Bounds(only_off=True).check_own_timer(H) or "")


async def test_a_messages_own_timer_is_held_to_the_bounds(tmp_path: Path) -> None:
    bounds = BoundsConfig(Bounds(min_timer_ms=M), (RoomRule("!legal:*", Bounds(only_off=True)),))
    h = await Harness(tmp_path / "l.db",
                      config=EngineConfig(bot_user_id=BOT, bounds=bounds)).start()
    try:
        await h.ingest(h.policy_event(Policy.after_send(D)),
                       Message("$short", ALICE, h.now(), timer=MessageTimer(Mode.AFTER_SEND, S)),
                       Message("$hour", ALICE, h.now(), timer=MessageTimer(Mode.AFTER_SEND, H)))
        assert (await h.event("$short"))["due_at"] == h.now() + M  # raised to min_timer
        assert (await h.event("$hour"))["due_at"] == h.now() + H  # shortened as asked
        # In an only-off room a message's own timer tracks nothing.
        await h.ingest(Message("$legal", ALICE, h.now(), timer=MessageTimer(Mode.AFTER_SEND, H)),
                       room="!legal:x")
        assert await h.event("$legal") is None
    finally:
        await h.close()


def test_the_published_timers_are_those_the_bounds_allow() -> None:
    capability = bounded_capability(Bounds(min_timer_ms=M, max_timer_ms=D, allow_off=False),
                                    Policy.after_send(2 * H))
    assert capability["timers"] and all(M <= t <= D for t in capability["timers"])
    assert 2 * H in capability["timers"] and "" not in capability["types"]
    only_off = bounded_capability(Bounds(only_off=True), None)
    assert only_off["types"] == [""] and only_off["timers"] == []
    assert "" in bounded_capability(Bounds(), None)["types"]


async def test_a_start_under_the_same_bounds_reads_no_room(tmp_path: Path) -> None:
    h = await Harness(tmp_path / "l.db",
                      config=EngineConfig(bot_user_id=BOT, bounds=LIMITED)).start()
    try:
        await h.ingest(h.policy_event(Policy.after_send(D)), Message("$m", ALICE, h.now()))
        assert h.engine is not None
        store = h.engine._store
        assert await reclamp_rooms(store, BoundsConfig(), Policy.off()) == 1  # lifted

        async def no_listing() -> list[Any]:
            raise AssertionError("read every room although the bounds did not change")

        listing, store.list_rooms = store.list_rooms, no_listing  # type: ignore[method-assign]
        assert await reclamp_rooms(store, BoundsConfig(), Policy.off()) == 0
        store.list_rooms = listing  # type: ignore[method-assign]
        assert await reclamp_rooms(store, LIMITED, Policy.off()) == 1  # changed again
    finally:
        await h.close()
