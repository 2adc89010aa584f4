"""Bounds set by the operator (config ``policy.bounds`` and ``policy.rooms``): the
shortest and longest timer and cap a room may set, whether ``off`` is allowed, and
rooms where ``off`` is the only allowed value. Pure values; no I/O.

A command or ``lethe policy set`` outside the bounds is refused (``Bounds.check``
names the bound). A policy that room state sets anyway (a member's client, or state
from before the bounds) is enforced at the nearest bound (``Bounds.clamp``): the
rooms table stores the enforced policy; the state's own is what the stored state
events say (``declared_policy``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from bot.engine.model import RoomRow
from bot.engine.policy import Mode, Policy, format_duration, resolve_policy

BOUNDS_KEY = "policy.bounds"
DURATION_KEYS = ("min_timer", "max_timer", "min_cap", "max_cap")


@dataclass(frozen=True)
class Bounds:
    """One room's bounds; None: no bound. ``where`` names, per key, the config entry
    that set it (``policy.bounds`` or ``policy.rooms["GLOB"]``), for messages."""

    min_timer_ms: int | None = None
    max_timer_ms: int | None = None
    min_cap_ms: int | None = None
    max_cap_ms: int | None = None
    allow_off: bool = True
    only_off: bool = False
    where: tuple[tuple[str, str], ...] = ()

    @property
    def unbounded(self) -> bool:
        return self == Bounds(where=self.where)

    def _at(self, key: str) -> str:
        """Which config entry set ``key``."""
        return dict(self.where).get(key, BOUNDS_KEY)

    def check(self, policy: Policy) -> str | None:
        """Why ``policy`` is outside these bounds, naming the bound; None if inside."""
        if self.only_off:
            if policy.active:
                return f"only off is allowed in this room (only_off, {self._at('only_off')})"
            return None
        if not policy.active:
            return None if self.allow_off else \
                f"off is not allowed (allow_off false, {self._at('allow_off')})"
        assert policy.timer_ms is not None
        problem = _outside("timer", policy.timer_ms, self.min_timer_ms, self.max_timer_ms,
                           self._at)
        if problem is None and policy.mode is Mode.AFTER_READ:
            assert policy.cap_ms is not None
            problem = _outside("cap", policy.cap_ms, self.min_cap_ms, self.max_cap_ms,
                               self._at)
        return problem

    def clamp(self, policy: Policy) -> Policy:
        """``policy`` enforced at the nearest bound (itself when inside): a timer or cap
        raised to the minimum or lowered to the maximum; an active policy in an
        only-off room becomes off; a disallowed off becomes after_send at max_timer
        (the longest the operator allows: the nearest to keeping messages). The mirror
        opt-in stays as the room set it."""
        if self.only_off:
            return policy if not policy.active else Policy.off().mirrored(
                policy.mirror_retention)
        if not policy.active:
            if self.allow_off:
                return policy
            assert self.max_timer_ms is not None  # the config requires it (read_bounds)
            return Policy.after_send(self.max_timer_ms).mirrored(policy.mirror_retention)
        assert policy.timer_ms is not None
        timer = _between(policy.timer_ms, self.min_timer_ms, self.max_timer_ms)
        if policy.mode is Mode.AFTER_SEND:
            return replace(policy, timer_ms=timer)
        assert policy.cap_ms is not None
        cap = _between(policy.cap_ms, self.min_cap_ms, self.max_cap_ms)
        # A cap lowered below the timer takes the timer down with it (never longer):
        # the config guarantees min_timer <= max_cap, so the timer stays in bounds.
        return replace(policy, timer_ms=min(timer, cap), cap_ms=cap)

    def allowed_timers(self, candidates: Iterable[int]) -> tuple[int, ...]:
        """The timers (ms) of ``candidates`` a room may set under these bounds, in their
        order; none in an only-off room (e.g. for the timers a room publishes)."""
        if self.only_off:
            return ()
        return tuple(ms for ms in candidates
                     if _outside("timer", ms, self.min_timer_ms, self.max_timer_ms,
                                 self._at) is None)

    def check_own_timer(self, ms: int) -> str | None:
        """Why one message may not be given a timer of ``ms`` of its own (``!lethe
        expire``), naming the bound; None if it may. Only the shortest bound and an
        only-off room matter: a message's own timer never lengthens the room's rule."""
        if self.only_off:
            return f"only off is allowed in this room (only_off, {self._at('only_off')})"
        return _outside("timer", ms, self.min_timer_ms, None, self._at)

    def describe(self) -> str:
        """The bounds in a line, for status and the CLI."""
        if self.only_off:
            return "only off"
        parts = [f"{key} {format_duration(ms)}" for key, ms in zip(
            DURATION_KEYS, (self.min_timer_ms, self.max_timer_ms, self.min_cap_ms,
                            self.max_cap_ms), strict=True) if ms is not None]
        if not self.allow_off:
            parts.append("off not allowed")
        return ", ".join(parts) or "none"


def _outside(name: str, ms: int, low: int | None, high: int | None,
             label: Callable[[str], str]) -> str | None:
    if low is not None and ms < low:
        return f"the {name} {format_duration(ms)} is shorter than the bound " \
            f"min_{name} {format_duration(low)} ({label(f'min_{name}')})"
    if high is not None and ms > high:
        return f"the {name} {format_duration(ms)} is longer than the bound " \
            f"max_{name} {format_duration(high)} ({label(f'max_{name}')})"
    return None


def _between(ms: int, low: int | None, high: int | None) -> int:
    if low is not None and ms < low:
        ms = low
    return ms if high is None else min(ms, high)


@dataclass(frozen=True)
class RoomRule:
    """``policy.rooms["GLOB"]``: the bounds of rooms whose id matches ``glob``."""

    glob: str
    bounds: Bounds


@dataclass(frozen=True)
class BoundsConfig:
    """``policy.bounds`` for every room, and the rules of ``policy.rooms``: the first
    whose glob matches a room's id gives that room's bounds (its keys over those of
    ``policy.bounds``). Room ids only, not aliases: any member with the power can
    change an alias, and a compliance bound must not move with it."""

    default: Bounds = field(default_factory=Bounds)
    rooms: tuple[RoomRule, ...] = ()

    def for_room(self, room_id: str) -> Bounds:
        for rule in self.rooms:
            if fnmatch.fnmatchcase(room_id, rule.glob):
                return rule.bounds
        return self.default

    @property
    def unbounded(self) -> bool:
        return self.default.unbounded and not self.rooms


@dataclass(frozen=True)
class Enforcement:
    """A room's policy as its state sets it (``declared``) and as Lethe enforces it."""

    declared: Policy
    enforced: Policy
    problem: str | None  # the bound the declared policy is outside of, if any

    @classmethod
    def of(cls, declared: Policy, bounds: Bounds) -> Enforcement:
        return cls(declared, bounds.clamp(declared), bounds.check(declared))

    def describe(self) -> str:
        """``set: X, enforced: Y (bound: ...)`` when the bounds changed it, else the
        policy's own sentence."""
        if self.problem is None:
            return self.enforced.describe()
        return f"set: {brief(self.declared)}, enforced: {brief(self.enforced)} " \
            f"(bound: {self.problem})"


def brief(policy: Policy) -> str:
    """The policy in command syntax: ``after-read 1h cap 1d readers all``."""
    if not policy.active:
        return "off"
    assert policy.timer_ms is not None
    text = f"{policy.mode.value.replace('_', '-')} {format_duration(policy.timer_ms)}"
    if policy.cap_ms is not None:
        text += f" cap {format_duration(policy.cap_ms)} readers {policy.readers.value}"
    return text


def declared_policy(row: RoomRow, default: Policy) -> Policy:
    """What a tracked room's stored state events say together (``default``, the bridge's
    server-wide policy, where they say nothing)."""
    winner = resolve_policy(row.lethe_state, row.beeper_state)
    return winner.policy if winner is not None else default


def row_enforcement(row: RoomRow, bounds: BoundsConfig, default: Policy) -> Enforcement:
    """A tracked room's declared policy, and what Lethe stored as enforced."""
    declared = declared_policy(row, default)
    return Enforcement(declared, row.policy,
                       bounds.for_room(row.room_id).check(declared))
