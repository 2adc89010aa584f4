"""In-room commands: ``!lethe help|status|off|after-send DUR|after-read DUR [cap DUR]
[readers all|any]``, each policy command with an optional ``retention on|off``,
``!lethe retention on|off`` alone (the mirror into ``m.room.retention``, keeping the
rule), and ``!lethe expire DUR`` sent as a reply (one message's own deadline,
bot/front/expire.py). A person's own defaults for new chats (bot/matrix/defaults.py):
``!lethe default`` (show), ``!lethe default dm|group POLICY`` (POLICY as the commands
above: off, after-send DUR, after-read DUR ...), ``!lethe default clear [dm|group]``.
Parsing is pure; the bot executes what it returns."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bot.engine.policy import (
    Policy,
    PolicyError,
    Readers,
    after_read_policy,
    parse_duration,
    parse_readers,
    shown,
)
from bot.matrix.defaults import RoomKind


class CommandError(ValueError):
    """A malformed command; the message is shown to the user as is."""


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class SetPolicy:
    """Set the rule ``policy`` says; ``mirror`` None keeps the room's mirror opt-in."""

    policy: Policy
    mirror: bool | None = None


@dataclass(frozen=True)
class SetMirror:
    """Turn the mirror into ``m.room.retention`` on or off, keeping the rule."""

    on: bool


@dataclass(frozen=True)
class Expire:
    """Sent as a reply: the replied-to message goes ``duration_ms`` after this command."""

    duration_ms: int


@dataclass(frozen=True)
class ShowDefault:
    """The sender's own defaults for new chats."""


@dataclass(frozen=True)
class SetDefault:
    """The sender's default for new chats of ``kind`` (``off``: they start with none)."""

    kind: RoomKind
    policy: Policy


@dataclass(frozen=True)
class ClearDefault:
    kinds: tuple[RoomKind, ...]


DefaultCommand = ShowDefault | SetDefault | ClearDefault
Command = Help | Status | SetPolicy | SetMirror | Expire | DefaultCommand

EXPIRE_USAGE = "{prefix} expire DUR, sent as a reply to the message (e.g. {prefix} expire 5m)"

_ON_OFF = {"on": True, "off": False}


def without_reply_fallback(body: str) -> str:
    """A reply's body without the quote of the message it answers (``> <@who> ...``
    lines and a blank line, which clients before Matrix 1.13 put first)."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    rest = lines[next((i for i, line in enumerate(lines) if not line.startswith(">")),
                      len(lines)):]
    return "\n".join(rest[1:] if rest and not rest[0].strip() else rest)


def is_command(body: str, prefix: str) -> bool:
    head = without_reply_fallback(body).strip().split(maxsplit=1)
    return bool(head) and head[0].lower() == prefix.lower()


def parse_command(body: str, prefix: str, default_cap_ms: int) -> Command:
    """Parse a message already known to start with ``prefix``."""
    words = without_reply_fallback(body).strip().split()
    if not words or words[0].lower() != prefix.lower():
        raise CommandError(f"commands start with {prefix}")
    args = [w.lower() for w in words[1:]]
    if not args or args == ["help"]:
        return Help()
    verb, rest = args[0], args[1:]
    try:
        if verb == "status" and not rest:
            return Status()
        if verb == "retention":
            if len(rest) != 1 or rest[0] not in _ON_OFF:
                raise CommandError(f"usage: {prefix} retention on|off")
            return SetMirror(_ON_OFF[rest[0]])
        if verb == "off":
            return SetPolicy(Policy.off(), _options(rest, {"retention"}).retention)
        if verb == "after-send":
            if not rest:
                raise CommandError(f"usage: {prefix} after-send DUR [retention on|off] "
                                   f"(e.g. {prefix} after-send 1d)")
            return SetPolicy(Policy.after_send(parse_duration(rest[0])),
                             _options(rest[1:], {"retention"}).retention)
        if verb == "after-read":
            return _after_read(rest, prefix, default_cap_ms)
        if verb == "expire":
            if len(rest) != 1:
                raise CommandError("usage: " + EXPIRE_USAGE.format(prefix=prefix))
            return Expire(parse_duration(rest[0]))
        if verb == "default":
            return _default(rest, prefix, default_cap_ms)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    raise CommandError(f"unknown command {shown(' '.join(words[1:]), 60)}; try {prefix} help")


def _after_read(rest: list[str], prefix: str, default_cap_ms: int) -> SetPolicy:
    if not rest:
        raise CommandError(
            f"usage: {prefix} after-read DUR [cap DUR] [readers all|any] [retention on|off] "
            f"(e.g. {prefix} after-read 1h cap 3d)"
        )
    timer = parse_duration(rest[0])
    options = _options(rest[1:], {"cap", "readers", "retention"})
    return SetPolicy(after_read_policy(timer, options.cap, options.readers, default_cap_ms),
                     options.retention)


_KINDS = {kind.value: kind for kind in RoomKind}


def _default(rest: list[str], prefix: str, default_cap_ms: int) -> DefaultCommand:
    usage = (f"usage: {prefix} default [dm|group off|after-send DUR|after-read DUR ...] or "
             f"{prefix} default clear [dm|group] (e.g. {prefix} default dm after-send 1d)")
    if not rest:
        return ShowDefault()
    if rest[0] == "clear":
        if len(rest) > 2 or (len(rest) == 2 and rest[1] not in _KINDS):
            raise CommandError(usage)
        return ClearDefault((_KINDS[rest[1]],) if len(rest) == 2 else tuple(RoomKind))
    if rest[0] not in _KINDS or len(rest) < 2:
        raise CommandError(usage)
    policy = parse_command(" ".join([prefix, *rest[1:]]), prefix, default_cap_ms)
    if not isinstance(policy, SetPolicy):
        raise CommandError(usage)
    return SetDefault(_KINDS[rest[0]], policy.policy.mirrored(bool(policy.mirror)))


_SYNTAX = {"cap": "cap DUR", "readers": "readers all|any", "retention": "retention on|off"}


@dataclass(frozen=True)
class _Options:
    cap: int | None = None
    readers: Readers = Readers.ALL
    retention: bool | None = None


def _options(words: list[str], allowed: set[str]) -> _Options:
    """``key value`` pairs after a command's own words, each key at most once: ``cap``
    (a duration), ``readers`` (all|any), ``retention`` (on|off), as ``allowed``."""
    expected = " or ".join(_SYNTAX[k] for k in _SYNTAX if k in allowed)
    seen: set[str] = set()
    options = _Options()
    while words:
        if len(words) < 2:
            raise CommandError(f"{shown(words[0])} needs a value: {expected}")
        key, value, words = words[0], words[1], words[2:]
        if key not in allowed:
            raise CommandError(f"unknown option {shown(key)}; expected {expected}")
        if key in seen:
            raise CommandError(f"{key} given twice")
        seen.add(key)
        if key == "cap":
            options = replace(options, cap=parse_duration(value))
        elif key == "readers":
            options = replace(options, readers=parse_readers(value))
        elif value in _ON_OFF:
            options = replace(options, retention=_ON_OFF[value])
        else:
            raise CommandError(f"retention must be on or off, not {shown(value)}")
    return options
