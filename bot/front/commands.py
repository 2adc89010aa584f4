"""In-room commands: ``!lethe help|status|off|after-send DUR|after-read DUR [cap DUR]
[readers all|any]``. Parsing is pure; the bot executes what it returns."""

from __future__ import annotations

from dataclasses import dataclass

from bot.engine.policy import (
    Policy,
    PolicyError,
    Readers,
    after_read_policy,
    parse_duration,
    parse_readers,
    shown,
)


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
    policy: Policy


Command = Help | Status | SetPolicy


def is_command(body: str, prefix: str) -> bool:
    head = body.strip().split(maxsplit=1)
    return bool(head) and head[0].lower() == prefix.lower()


def parse_command(body: str, prefix: str, default_cap_ms: int) -> Command:
    """Parse a message already known to start with ``prefix``."""
    words = body.strip().split()
    if not words or words[0].lower() != prefix.lower():
        raise CommandError(f"commands start with {prefix}")
    args = [w.lower() for w in words[1:]]
    if not args or args == ["help"]:
        return Help()
    verb, rest = args[0], args[1:]
    try:
        if verb == "status" and not rest:
            return Status()
        if verb == "off" and not rest:
            return SetPolicy(Policy.off())
        if verb == "after-send":
            if len(rest) != 1:
                raise CommandError(f"usage: {prefix} after-send DUR (e.g. {prefix} after-send 1d)")
            return SetPolicy(Policy.after_send(parse_duration(rest[0])))
        if verb == "after-read":
            return SetPolicy(_after_read(rest, prefix, default_cap_ms))
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    raise CommandError(f"unknown command {shown(' '.join(words[1:]), 60)}; try {prefix} help")


def _after_read(rest: list[str], prefix: str, default_cap_ms: int) -> Policy:
    if not rest:
        raise CommandError(
            f"usage: {prefix} after-read DUR [cap DUR] [readers all|any] "
            f"(e.g. {prefix} after-read 1h cap 3d)"
        )
    timer = parse_duration(rest[0])
    cap: int | None = None
    readers = Readers.ALL
    options = rest[1:]
    seen: set[str] = set()
    while options:
        if len(options) < 2:
            raise CommandError(f"{shown(options[0])} needs a value: cap DUR or readers all|any")
        key, value, options = options[0], options[1], options[2:]
        if key in seen:
            raise CommandError(f"{key} given twice")
        seen.add(key)
        if key == "cap":
            cap = parse_duration(value)
        elif key == "readers":
            readers = parse_readers(value)
        else:
            raise CommandError(f"unknown option {shown(key)}; expected cap or readers")
    return after_read_policy(timer, cap, readers, default_cap_ms)
