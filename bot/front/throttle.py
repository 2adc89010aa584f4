"""How often the bot answers commands: a flood of `!lethe help` from one member must not
become a flood of notices, each of which the bot later redacts under the same rate
limit as the messages it is there to redact.

Each (member, room) gets a small burst of replies, then one per ``every_s``; on top,
all rooms together get at most ``per_minute`` replies a minute. A command over either
limit is ignored (logged at DEBUG): answering it would only feed the flood. The bot
asks only for commands of members who may not change the policy (bot.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 2
EVERY_S = 30.0
PER_MINUTE = 20
_KEYS_KEPT = 10_000  # buckets remembered before full (idle) ones are dropped


@dataclass
class _Bucket:
    tokens: float
    at: float


class ReplyThrottle:
    def __init__(
        self,
        *,
        burst: int = BURST,
        every_s: float = EVERY_S,
        per_minute: int = PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._rate = 1.0 / every_s
        self._per_minute = per_minute
        self._clock = clock
        self._members: dict[tuple[str, str], _Bucket] = {}
        self._all = _Bucket(float(per_minute), clock())

    def allow(self, room_id: str, user_id: str) -> bool:
        """Whether to answer a command of ``user_id`` in ``room_id`` now (and count it)."""
        now = self._clock()
        self._refill(self._all, now, self._per_minute / 60.0, self._per_minute)
        bucket = self._members.get((room_id, user_id))
        if bucket is None:
            if len(self._members) >= _KEYS_KEPT:
                self._forget_idle(now)
            bucket = self._members[(room_id, user_id)] = _Bucket(float(self._burst), now)
        self._refill(bucket, now, self._rate, self._burst)
        if bucket.tokens < 1 or self._all.tokens < 1:
            return False
        bucket.tokens -= 1
        self._all.tokens -= 1
        return True

    @staticmethod
    def _refill(bucket: _Bucket, now: float, rate: float, cap: float) -> None:
        bucket.tokens = min(cap, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now

    def _forget_idle(self, now: float) -> None:
        for key, bucket in list(self._members.items()):
            self._refill(bucket, now, self._rate, self._burst)
            if bucket.tokens >= self._burst:
                del self._members[key]
