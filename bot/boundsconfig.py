"""The operator's bounds on room policies: ``policy.bounds`` (every room) and
``policy.rooms`` (per room id glob, e.g. ``only_off: true`` for compliance), read for
the bot and the bridge alike into bot/engine/bounds.py's values."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.engine.bounds import BOUNDS_KEY, DURATION_KEYS, Bounds, BoundsConfig, RoomRule
from bot.engine.policy import Policy, format_duration

if TYPE_CHECKING:
    from bot.config import ConfigReader

BOUND_KEYS = (*DURATION_KEYS, "allow_off")
ROOM_KEYS = (*BOUND_KEYS, "only_off")


def read_bounds(r: ConfigReader, default_cap_ms: int) -> BoundsConfig:
    policy = r.section("policy")
    raw = policy.get("bounds")
    if raw is not None and not isinstance(raw, dict):
        raise r.fail(BOUNDS_KEY, f"must be a mapping, not {type(raw).__name__}")
    default = _merge(r, Bounds(), raw or {}, BOUNDS_KEY, BOUND_KEYS)
    _check_default_cap(r, default, default_cap_ms, BOUNDS_KEY)
    rooms = policy.get("rooms")
    if rooms is None:
        return BoundsConfig(default)
    if not isinstance(rooms, dict):
        raise r.fail("policy.rooms", "must be a mapping of room id globs to bounds, e.g. "
                                     "'!abc:example.org': {only_off: true}")
    rules = []
    for glob, entry in rooms.items():
        key = f'policy.rooms["{glob}"]'
        if not isinstance(glob, str) or not glob.startswith(("!", "*", "?", "[")):
            raise r.fail(key, "must be a room id or a glob of room ids like '!*:example.org' "
                              "(not an alias: members can move an alias, a bound must stay)")
        if not isinstance(entry, dict) or not entry:
            raise r.fail(key, "must be a mapping of bounds, e.g. {only_off: true} or "
                              "{max_timer: 1d}")
        bounds = _merge(r, default, entry, key, ROOM_KEYS)
        if not bounds.only_off:
            _check_default_cap(r, bounds, default_cap_ms, key)
        rules.append(RoomRule(glob, bounds))
    return BoundsConfig(default, tuple(rules))


def _merge(r: ConfigReader, base: Bounds, raw: dict[str, Any], where: str,
           known: tuple[str, ...]) -> Bounds:
    """``base`` with the keys ``raw`` sets, validated as a whole."""
    for key in raw:
        if key not in known:
            raise r.fail(f"{where}.{key}", f"unknown key; expected {', '.join(known)}")
    changes: dict[str, Any] = {}
    for key in DURATION_KEYS:
        if key in raw:
            if raw[key] is None:
                changes[f"{key}_ms"] = None  # explicitly unbounded for these rooms
            else:
                changes[f"{key}_ms"] = r.duration(raw, f"{where}.{key}", "")
    for key in ("allow_off", "only_off"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise r.fail(f"{where}.{key}", f"must be true or false, not {raw[key]!r}")
            changes[key] = raw[key]
    if raw.get("only_off") and len(raw) > 1:
        raise r.fail(f"{where}.only_off", "takes no other bound: off is the only policy "
                                          "these rooms may have")
    source = dict(base.where)
    source.update({key: where for key in raw})
    bounds = replace(base, **changes, where=tuple(sorted(source.items())))
    if bounds.only_off:
        # Nothing else applies; keep only which entry said so.
        return Bounds(only_off=True, where=(("only_off", where),))
    _check_order(r, bounds, where)
    return bounds


def _check_order(r: ConfigReader, b: Bounds, where: str) -> None:
    pairs = (("min_timer", b.min_timer_ms, "max_timer", b.max_timer_ms),
             ("min_cap", b.min_cap_ms, "max_cap", b.max_cap_ms),
             # An after_read policy needs a cap at least as long as its timer.
             ("min_timer", b.min_timer_ms, "max_cap", b.max_cap_ms))
    for low_key, low, high_key, high in pairs:
        if low is not None and high is not None and low > high:
            raise r.fail(where, f"{low_key} {format_duration(low)} is longer than "
                                f"{high_key} {format_duration(high)}")
    if not b.allow_off and b.max_timer_ms is None:
        raise r.fail(f"{where}.allow_off", "false needs max_timer: a room whose state says "
                                           "off is enforced as after_send at max_timer")


def _check_default_cap(r: ConfigReader, b: Bounds, default_cap_ms: int, where: str) -> None:
    """policy.default_cap is the cap of every after_read policy that names none (a
    command, the Beeper event): it must lie inside the cap bounds."""
    shown = format_duration(default_cap_ms)
    if b.min_cap_ms is not None and default_cap_ms < b.min_cap_ms:
        raise r.fail("policy.default_cap", f"{shown} is shorter than min_cap of {where}")
    if b.max_cap_ms is not None and default_cap_ms > b.max_cap_ms:
        raise r.fail("policy.default_cap", f"{shown} is longer than max_cap of {where}")


def check_default_policy(r: ConfigReader, bounds: BoundsConfig, policy: Policy,
                         key: str) -> None:
    """A configured default policy (the bridge's) must lie inside ``policy.bounds``."""
    problem = bounds.default.check(policy)
    if problem is not None:
        raise r.fail(key, f"is outside the bounds: {problem}")

