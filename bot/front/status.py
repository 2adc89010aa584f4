"""The text of `!lethe status`: policy, whether it can be enforced, and what is pending."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.engine.engine import RoomStatus
from bot.engine.power import PowerState, describe_level


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


UNTRACKED_KEY = "untracked:"  # + room id: a meta key of lethe.db


@dataclass(frozen=True)
class UntrackedSpan:
    """Part of a room's history the bot could not page back over (after downtime, or
    when rebuilding a lost database): events sent after ``since_ms`` (None: unknown)
    and before ``until_ms`` (None: unknown) were not tracked. Times only, no content."""

    since_ms: int | None
    until_ms: int | None
    reason: str  # fixed words

    def to_json(self) -> str:
        return json.dumps({"since": self.since_ms, "until": self.until_ms,
                           "reason": self.reason})

    @classmethod
    def from_json(cls, text: str | None) -> UntrackedSpan | None:
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        since, until = data.get("since"), data.get("until")
        return cls(since if isinstance(since, int) else None,
                   until if isinstance(until, int) else None, str(data.get("reason", "")))

    def describe(self) -> str:
        since = _when(self.since_ms) if self.since_ms is not None else "an unknown time"
        until = _when(self.until_ms) if self.until_ms is not None else "an unknown time"
        return (f"events sent between {since} and {until} were not tracked and will not be "
                f"redacted by me ({self.reason})")


def status_text(status: RoomStatus | None, power: PowerState, bot_user_id: str,
                untracked: UntrackedSpan | None = None) -> str:
    if status is None:
        return "I have not seen this room's state yet; try again in a moment."
    lines = [f"Policy: {status.policy.describe()}"]
    if status.policy_sender:
        lines[0] += f", set by {status.policy_sender}"
    level = power.level(bot_user_id)
    if power.can_redact_others(bot_user_id):
        lines.append(f"Enforcement: yes (my power level {describe_level(level)}, "
                     f"redacting needs {power.redact})")
    else:
        lines.append(f"Enforcement: NO, I cannot redact other people's messages: my power level "
                     f"is {describe_level(level)}, redacting needs {power.redact}")
    pending = f"Pending: {status.pending} message(s)"
    if status.next_due is not None:
        pending += f", next due {_when(status.next_due)}"
    lines.append(pending)
    lines.append(f"Redacted so far: {status.redacted}" +
                 (f"; unconfirmed failures: {status.failed}" if status.failed else ""))
    if untracked is not None:
        lines.append(f"Not tracked: {untracked.describe()}")
    return "\n".join(lines)
