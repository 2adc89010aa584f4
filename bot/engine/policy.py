"""Retention policy: the value object, duration parsing and the room-state formats.

A policy lives in room state, in two events:

* ``chat.lethe.policy``: Lethe's own event, carrying the full policy.
* ``com.beeper.disappearing_timer``: the de-facto event of mautrix bridges and
  Beeper clients (``{"type": "after_read"|"after_send", "timer": ms}``, ``{}`` = off).

Lethe writes both and honours either; when they disagree, the newer one wins.

A room may also opt in to a mirror of the rule in ``m.room.retention`` (MSC1763),
which Synapse purges by: the opt-in is a key of Lethe's own event
(``mirror_retention``), so it is room state like the rest, and Lethe versions
before it read the event as they always did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, cast

POLICY_EVENT_TYPE = "chat.lethe.policy"
BEEPER_EVENT_TYPE = "com.beeper.disappearing_timer"
POLICY_STATE_TYPES = (POLICY_EVENT_TYPE, BEEPER_EVENT_TYPE)
MIRROR_KEY = "mirror_retention"  # in Lethe's event: mirror the rule into m.room.retention

SECOND_MS = 1000
MIN_DURATION_MS = SECOND_MS
# Far beyond any sensible retention, small enough to keep due times in int64.
MAX_DURATION_MS = 100 * 365 * 24 * 3600 * SECOND_MS

_UNITS_MS = {
    "w": 7 * 24 * 3600 * SECOND_MS,
    "d": 24 * 3600 * SECOND_MS,
    "h": 3600 * SECOND_MS,
    "m": 60 * SECOND_MS,
    "s": SECOND_MS,
}
_UNIT_ORDER = "wdhms"
_PART = re.compile(r"(\d+)([wdhms])")


class PolicyError(ValueError):
    """Input that does not describe a valid policy or duration."""


def shown(value: object, limit: int = 40) -> str:
    """``repr`` of bad input for an error message, cut short: the error goes back to
    the room as a notice, and must not echo a flood (or much content) back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Mode(StrEnum):
    OFF = "off"
    AFTER_SEND = "after_send"
    AFTER_READ = "after_read"


class Readers(StrEnum):
    ALL = "all"
    ANY = "any"


def parse_duration(text: str) -> int:
    """Parse ``30s``, ``5m``, ``1h30m``, ``2d``, ``1w`` into milliseconds.

    Units must appear at most once each, largest first; the total must be at
    least one second.
    """
    if not isinstance(text, str):
        raise PolicyError(f"duration must be text like 30s, 5m, 1h30m, 2d or 1w, not {shown(text)}")
    raw = text.strip().lower()
    if not raw:
        raise PolicyError("duration is empty; use e.g. 30s, 5m, 1h30m, 2d or 1w")
    pos = 0
    total = 0
    last_unit = -1
    # Anchored matches, not finditer: after a run of digits with no unit, finditer
    # would rescan from every later digit (quadratic; minutes for one long message).
    while (match := _PART.match(raw, pos)) is not None:
        unit_index = _UNIT_ORDER.index(match.group(2))
        if unit_index <= last_unit:
            raise PolicyError(
                f"unknown duration {shown(text)}: give each unit once, largest first (e.g. 1h30m)"
            )
        last_unit = unit_index
        digits = match.group(1).lstrip("0")
        # A count this long is over the limit whatever its unit; int() of thousands of
        # digits would raise a ValueError that is not a PolicyError.
        if len(digits) > 16:
            raise PolicyError(f"duration {shown(text)} is too long (at most 100 years)")
        total += int(digits or "0") * _UNITS_MS[match.group(2)]
        pos = match.end()
        if total > MAX_DURATION_MS:
            raise PolicyError(f"duration {shown(text)} is too long (at most 100 years)")
    if pos != len(raw) or pos == 0:
        raise PolicyError(
            f"unknown duration {shown(text)}; use a number and a unit s, m, h, d or w "
            "(e.g. 30s, 5m, 1h30m, 2d, 1w)"
        )
    if total < MIN_DURATION_MS:
        raise PolicyError(f"duration {shown(text)} is too short; the minimum is 1s")
    return total


def format_duration(ms: int) -> str:
    """Render milliseconds in the same syntax ``parse_duration`` accepts (rounded to seconds)."""
    seconds = max(0, round(ms / SECOND_MS))
    if seconds == 0:
        return "0s"
    parts = []
    for unit in _UNIT_ORDER:
        size = _UNITS_MS[unit] // SECOND_MS
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class Policy:
    """One room's retention rule. ``timer_ms``/``cap_ms`` are None where the mode has none.
    ``mirror_retention``: the room asks Lethe to mirror the rule into ``m.room.retention``
    (bot/matrix/retention.py); it changes nothing in how Lethe redacts."""

    mode: Mode = Mode.OFF
    timer_ms: int | None = None
    cap_ms: int | None = None
    readers: Readers = Readers.ALL
    mirror_retention: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mirror_retention, bool):
            raise PolicyError(f"{MIRROR_KEY} must be true or false, "
                              f"not {shown(self.mirror_retention)}")
        if self.mode is Mode.OFF:
            if self.timer_ms is not None or self.cap_ms is not None:
                raise PolicyError("an off policy has no timer or cap")
            return
        _check_ms("timer", self.timer_ms)
        if self.mode is Mode.AFTER_READ:
            _check_ms("cap", self.cap_ms)
            assert self.timer_ms is not None and self.cap_ms is not None
            if self.cap_ms < self.timer_ms:
                raise PolicyError("the cap must be at least as long as the timer")
        elif self.cap_ms is not None:
            raise PolicyError("only after_read has a cap")

    @classmethod
    def off(cls) -> Policy:
        return cls()

    @classmethod
    def after_send(cls, timer_ms: int) -> Policy:
        return cls(Mode.AFTER_SEND, timer_ms)

    @classmethod
    def after_read(cls, timer_ms: int, cap_ms: int, readers: Readers = Readers.ALL) -> Policy:
        return cls(Mode.AFTER_READ, timer_ms, cap_ms, readers)

    @property
    def active(self) -> bool:
        return self.mode is not Mode.OFF

    @property
    def max_lifetime_ms(self) -> int | None:
        """The longest any message lives under this policy, whatever happens: the
        after_send timer, or the after_read cap; None when off. What the mirror into
        ``m.room.retention`` says (after_read's reading rule has no equivalent there)."""
        return self.cap_ms if self.mode is Mode.AFTER_READ else self.timer_ms

    def mirrored(self, on: bool | None) -> Policy:
        """This rule with the mirror opt-in ``on`` (None: as it is)."""
        return self if on is None or on == self.mirror_retention else \
            replace(self, mirror_retention=on)

    def deadline(self, sent_at: int, read_at: int | None = None) -> int:
        """When a message sent at ``sent_at`` (and read by all its required readers at
        ``read_at``, if they have) is due under this policy. The store's SQL repeats
        this rule (store/sql.py DEADLINE); nothing else may."""
        assert self.timer_ms is not None, "an off policy has no deadline"
        if self.mode is Mode.AFTER_SEND:
            return sent_at + self.timer_ms
        assert self.cap_ms is not None
        capped = sent_at + self.cap_ms
        return capped if read_at is None else min(capped, read_at + self.timer_ms)

    def describe(self) -> str:
        """A short human sentence, used in notices, status and the CLI."""
        rule = self._describe_rule()
        if not self.mirror_retention:
            return rule
        lifetime = self.max_lifetime_ms
        return rule + ("; mirrored into m.room.retention (max_lifetime "
                       f"{format_duration(lifetime)})" if lifetime is not None else
                       "; mirrored into m.room.retention (no max_lifetime)")

    def _describe_rule(self) -> str:
        if self.mode is Mode.OFF:
            return "off (messages are kept)"
        assert self.timer_ms is not None
        if self.mode is Mode.AFTER_SEND:
            return f"after-send {format_duration(self.timer_ms)} (each message is redacted " \
                f"{format_duration(self.timer_ms)} after it was sent)"
        assert self.cap_ms is not None
        who = "every member" if self.readers is Readers.ALL else "any member"
        return (
            f"after-read {format_duration(self.timer_ms)}, cap {format_duration(self.cap_ms)}, "
            f"readers {self.readers.value} (redacted {format_duration(self.timer_ms)} after "
            f"{who} has read it, and at the latest {format_duration(self.cap_ms)} after sending)"
        )

    # --- room state -------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Content of Lethe's own state event."""
        content: dict[str, Any] = {"mode": self.mode.value}
        if self.timer_ms is not None:
            content["timer_ms"] = self.timer_ms
        if self.mode is Mode.AFTER_READ:
            content["cap_ms"] = self.cap_ms
            content["readers"] = self.readers.value
        if self.mirror_retention:  # only when on: content without it stays as it was
            content[MIRROR_KEY] = True
        return content

    def to_beeper(self) -> dict[str, Any]:
        """Content of ``com.beeper.disappearing_timer``."""
        if self.mode is Mode.OFF:
            return {}
        return {"type": self.mode.value, "timer": self.timer_ms}

    def same_rule_as_beeper(self, other: Policy) -> bool:
        """Whether ``other`` (read from the Beeper event) says what this policy says."""
        return self.mode is other.mode and self.timer_ms == other.timer_ms


def _check_ms(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(f"{name} must be a whole number of milliseconds, not {shown(value)}")
    if value < MIN_DURATION_MS:
        raise PolicyError(f"{name} must be at least 1s")
    if value > MAX_DURATION_MS:
        raise PolicyError(f"{name} is too long (at most 100 years)")


def policy_from_state(content: object) -> Policy:
    """Parse Lethe's own state event content; raise PolicyError saying what is wrong."""
    if not isinstance(content, dict):
        raise PolicyError("policy content must be an object")
    if not content:
        return Policy.off()
    mirror = content.get(MIRROR_KEY, False)
    if not isinstance(mirror, bool):
        raise PolicyError(f"{MIRROR_KEY} must be true or false, not {shown(mirror)}")
    return _rule_from_state(content).mirrored(mirror)


def _rule_from_state(content: dict[str, Any]) -> Policy:
    try:
        mode = Mode(cast(str, content.get("mode")))  # ValueError for anything else
    except ValueError:
        raise PolicyError(
            f"unknown mode {shown(content.get('mode'))}; expected off, after_send or after_read"
        ) from None
    if mode is Mode.OFF:
        return Policy.off()
    timer = content.get("timer_ms")
    if mode is Mode.AFTER_SEND:
        _check_ms("timer_ms", timer)
        return Policy.after_send(timer)  # type: ignore[arg-type]
    cap = content.get("cap_ms")
    try:
        readers = Readers(str(content.get("readers", Readers.ALL.value)))
    except ValueError:
        raise PolicyError(
            f"unknown readers {shown(content.get('readers'))}; expected all or any"
        ) from None
    _check_ms("timer_ms", timer)
    _check_ms("cap_ms", cap)
    return Policy.after_read(timer, cap, readers)  # type: ignore[arg-type]


def default_cap(default_cap_ms: int, timer_ms: int) -> int:
    """The cap of an after_read policy that names none: the configured default, but
    never shorter than the timer."""
    return max(default_cap_ms, timer_ms)


def policy_from_beeper(content: object, default_cap_ms: int) -> Policy:
    """Parse ``com.beeper.disappearing_timer``; after_read gets the configured default cap."""
    if not isinstance(content, dict):
        raise PolicyError("disappearing_timer content must be an object")
    if not content or (content.get("type") in (None, "") and not content.get("timer")):
        return Policy.off()
    kind = content.get("type")
    timer = content.get("timer")
    if kind == Mode.AFTER_SEND.value:
        _check_ms("timer", timer)
        return Policy.after_send(timer)  # type: ignore[arg-type]
    if kind == Mode.AFTER_READ.value:
        _check_ms("timer", timer)
        assert isinstance(timer, int)
        return after_read_policy(timer, None, Readers.ALL, default_cap_ms)
    raise PolicyError(
        f"unknown disappearing_timer type {shown(kind)}; expected after_read or after_send"
    )


def policy_from_event(event_type: object, content: object, default_cap_ms: int) -> Policy:
    """The content of either policy state event, parsed by its type's format; the one
    place that tells the two apart. PolicyError if invalid or not a policy event."""
    if event_type == POLICY_EVENT_TYPE:
        return policy_from_state(content)
    if event_type == BEEPER_EVENT_TYPE:
        return policy_from_beeper(content, default_cap_ms)
    raise PolicyError(f"{event_type!r} is not a policy event")


def parse_readers(value: object) -> Readers:
    """``all`` or ``any``, as an in-room command or the CLI gives it."""
    try:
        return Readers(value if isinstance(value, str) else "")
    except ValueError:
        raise PolicyError(f"readers must be all or any, not {shown(value)}") from None


def after_read_policy(timer_ms: int, cap_ms: int | None, readers: Readers,
                      default_cap_ms: int) -> Policy:
    """An after_read policy from its parts, whatever syntax gave them (a command, the
    CLI, the configuration, the Beeper event, which has no cap): without a cap of its
    own it gets the configured default cap, or the timer if that is longer."""
    cap = default_cap(default_cap_ms, timer_ms) if cap_ms is None else cap_ms
    return Policy.after_read(timer_ms, cap, readers)


@dataclass(frozen=True)
class StatePolicy:
    """A policy as read from one state event, with what decides precedence."""

    policy: Policy
    event_type: str
    sender: str
    origin_ts: int


def resolve_policy(lethe: StatePolicy | None, beeper: StatePolicy | None) -> StatePolicy | None:
    """Combine the two state events: the newer wins, but a Beeper event that merely
    mirrors Lethe's (same mode and timer) keeps Lethe's cap and readers. The mirror
    opt-in is a setting of the room that only Lethe's event can carry: it stays
    whichever event says the rule."""
    if lethe is None or beeper is None:
        return lethe or beeper
    if lethe.policy.same_rule_as_beeper(beeper.policy) or beeper.origin_ts <= lethe.origin_ts:
        return lethe
    if not lethe.policy.mirror_retention:
        return beeper
    return replace(beeper, policy=beeper.policy.mirrored(True))
