"""Invites the bot could not accept yet, retried with backoff for a bounded time.

Over federation a join can fail for a while: the inviting server may be briefly
unreachable, or answer "You are not invited" because it has not yet stored its
own invite (a known Synapse race). So a failed join is retried, 2 s, 4 s, ... up
to a minute apart, for at most ``GIVE_UP_AFTER_S``; the pending invites are kept
in Lethe's database (meta ``pending_invites``) so a restart resumes them and
`lethe rooms list` shows them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

FIRST_DELAY_S = 2.0
MAX_DELAY_S = 60.0
GIVE_UP_AFTER_S = 15 * 60.0
META_KEY = "pending_invites"
ERROR_CHARS = 200  # what a homeserver's error may take up in the database


@dataclass(frozen=True)
class PendingInvite:
    room_id: str
    inviter: str | None
    since_ms: int  # the first failed attempt
    attempts: int
    last_error: str


class JoinRetries:
    def __init__(self, pending: dict[str, PendingInvite] | None = None) -> None:
        self._pending: dict[str, PendingInvite] = dict(pending or {})

    def failed(self, room_id: str, inviter: str | None, error: str,
               now_ms: int) -> float | None:
        """Record a failed join; seconds until the next attempt, or None to give up."""
        before = self._pending.get(room_id)
        entry = PendingInvite(room_id, inviter, now_ms, 1, error[:ERROR_CHARS]) \
            if before is None else replace(before, attempts=before.attempts + 1,
                                           last_error=error[:ERROR_CHARS],
                                           inviter=inviter or before.inviter)
        if (now_ms - entry.since_ms) / 1000 >= GIVE_UP_AFTER_S:
            self._pending.pop(room_id, None)
            return None
        self._pending[room_id] = entry
        return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** (entry.attempts - 1))

    def done(self, room_id: str) -> bool:
        """The room was joined, or the invite is gone: True if it was pending."""
        return self._pending.pop(room_id, None) is not None

    def pending(self) -> list[PendingInvite]:
        return sorted(self._pending.values(), key=lambda p: p.since_ms)

    def to_json(self) -> str:
        return json.dumps([asdict(p) for p in self.pending()])


def load_pending(raw: str | None) -> dict[str, PendingInvite]:
    """The pending invites stored in meta; a damaged value counts as none."""
    try:
        items = json.loads(raw) if raw else []
        return {p.room_id: p for p in (PendingInvite(**item) for item in items)}
    except (ValueError, TypeError):
        return {}
