"""Spans of a room's history the bot could not page back over, kept in lethe.db for
`!lethe status` (bot/front/texts.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime


def when(ms: int) -> str:
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
        since = when(self.since_ms) if self.since_ms is not None else "an unknown time"
        until = when(self.until_ms) if self.until_ms is not None else "an unknown time"
        return (f"events sent between {since} and {until} were not tracked and will not be "
                f"redacted by me ({self.reason})")
