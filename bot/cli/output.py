"""How the admin commands print: aligned tables for people, JSON for scripts, a
progress bar only on a terminal. Never anything of a message but ids and times.

Everything printed for people goes through ``say`` (tables, ``Key: value`` lines,
warnings, errors): room names, aliases, topics, user ids and the homeserver's error
texts come from outside, and a control character in them must not reach the
operator's terminal as an escape sequence. JSON needs no such care: ``json.dumps``
escapes every non-printable and non-ASCII character."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Protocol

import click

from bot.cli.roomstate import RoomState
from bot.config import Config
from bot.engine.bounds import Bounds, Enforcement, brief
from bot.engine.model import MediaCounts, RoomRow
from bot.engine.policy import Policy, format_duration
from bot.engine.power import describe_level

# C0 controls (newline and tab included: text from outside must not start a line of
# its own or break a table), DEL, C1 controls (CSI and OSC among them), and the
# characters that reorder text (bidi embeddings, overrides and isolates, marks) or
# break lines.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def clean(text: object) -> str:
    """``text`` safe for a terminal: unsafe characters shown as ``\\x1b`` or ``\\u202e``."""
    return _UNSAFE.sub(_escape, str(text))


def say(text: object = "", *, err: bool = False) -> None:
    """Print one line for people (on stderr with ``err``), made safe by ``clean``."""
    click.echo(clean(text), err=err)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout (for scripts), nothing else."
)


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(ms: int | None, now_ms: int) -> str:
    """``in 5m`` or ``3m ago``."""
    if ms is None:
        return "-"
    if ms >= now_ms:
        return f"in {format_duration(ms - now_ms)}"
    return f"{format_duration(now_ms - ms)} ago"


def policy_json(policy: Policy) -> dict[str, Any]:
    return {**policy.to_state(), "text": policy.describe()}


def short_policy(policy: Policy) -> str:
    """The policy in command syntax, for table cells: ``after-read 1h cap 1d``."""
    return brief(policy)


def bounds_json(state: RoomState, config: Config) -> dict[str, Any]:
    """The room's policy under the operator's bounds (bot/engine/bounds.py): what its
    state sets, what Lethe enforces, and the bound in between (``text``: for people)."""
    bounds = config.bounds.for_room(state.room_id)
    return enforced_json(Enforcement.of(state.policy, bounds), bounds)


def enforced_json(found: Enforcement, bounds: Bounds) -> dict[str, Any]:
    return {"set": policy_json(found.declared), "enforced": policy_json(found.enforced),
            "bound": found.problem, "bounds": bounds.describe(), "text": found.describe()}


def _level(level: float) -> int | str:
    text = describe_level(level)
    return int(text) if text.lstrip("-").isdigit() else text  # "creator": unlimited


def enforcement(state: RoomState, bot: str) -> dict[str, Any]:
    return {
        "can_enforce": state.power.can_redact_others(bot),
        "bot_level": _level(state.power.level(bot)),
        "redact_level": state.power.redact,
    }


def enforcement_text(state: RoomState, bot: str, *, long: bool = False) -> str:
    level = describe_level(state.power.level(bot))
    redact = state.power.redact
    if state.power.can_redact_others(bot):
        return f"yes (the bot's power level {level}, redacting needs {redact})" if long else "yes"
    if long:
        return (f"NO: the bot's power level is {level}, redacting others' messages needs "
                f"{redact}")
    return f"NO (level {level} < {redact})"


def policy_events_json(state: RoomState) -> list[dict[str, Any]]:
    return [
        {"type": v.event_type, "sender": v.sender, "origin_ts": v.origin_ts,
         "content": dict(v.content), "ignored_because": v.problem}
        for v in state.policy_events
    ]


def policy_cell(state: RoomState, config: Config) -> str:
    """The policy for a table cell; under a bound, what is set and what is enforced."""
    return enforced_cell(Enforcement.of(state.policy, config.bounds.for_room(state.room_id)))


def enforced_cell(found: Enforcement) -> str:
    if found.problem is None:
        return brief(found.enforced)
    return f"set {brief(found.declared)}, enforced {brief(found.enforced)} " \
        f"(bound: {found.problem})"


def policy_lines(state: RoomState, row: RoomRow | None,
                 config: Config) -> list[tuple[str, str]]:
    """The two policy state events, and Lethe's own view where it differs from what the
    room state and the operator's bounds say together."""
    lines = [
        ("State event", f"{v.event_type} by {v.sender} at {when(v.origin_ts)}"
         + (f"; IGNORED: {v.problem}" if v.problem else ""))
        for v in state.policy_events
    ]
    bounds = config.bounds.for_room(state.room_id)
    if not bounds.unbounded:
        lines.append(("Bounds", bounds.describe()))
    if row is not None and row.policy != bounds.clamp(state.policy):
        lines.append(("Lethe applies", f"{row.policy.describe()} (it has not caught up with "
                                       "the room state yet, or it kept the policy in force "
                                       "before an ignored event)"))
    return lines


def media_json(counts: MediaCounts | None, deletes: bool) -> dict[str, Any] | None:
    """A room's files, as the JSON outputs show them: ``deletion`` says whether the
    files of expired messages are deleted (an admin token); None: no database."""
    return None if counts is None else {"deletion": deletes, **asdict(counts)}


def fields(lines: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        say(f"{key + ':':<{width + 1}} {value}")


def emit_json(data: object) -> None:
    # ensure_ascii (the default) escapes every control and non-ASCII character.
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    # Cleaned before measuring, so an escaped cell keeps the columns aligned.
    cells = [[clean(c) for c in headers], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def warn(text: str) -> None:
    say(f"warning: {text}", err=True)


class Progress(Protocol):
    def update(self, n_steps: int) -> None: ...


class _Silent:
    def update(self, n_steps: int) -> None:
        pass


@contextmanager
def progress(length: int, label: str, *, quiet: bool) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal (and not ``quiet``)."""
    if quiet or length <= 0 or not sys.stderr.isatty():
        yield _Silent()
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar
