"""Redact one due event, confirm it is gone, and decide what happens on failure.

The Matrix I/O is behind ``Transport`` (the nio bot and the appservice bridge
each provide one). A 200 from ``/redact`` proves nothing (moderators get 200 for
unknown event ids). Two things count as proof:

- a fetch of the event that shows empty content (one request per redaction, about
  a third of what the redaction itself costs the homeserver), or
- the echo: the redaction event whose id the homeserver returned comes back
  through the front's event stream (sync, or an appservice push), which shows the
  homeserver persisted it. It costs nothing extra.

A front whose event stream carries Lethe's own redactions sets ``echo_wait_ms``.
Then the first redaction in each room and every ``SPOT_CHECK_EVERY``-th are still
fetched, as are those whose echo does not come within ``echo_wait_ms``; a fetch
that finds content after a 200 stops trusting echoes for the rest of the run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from bot.engine.clock import Clock
from bot.engine.store import DueEvent, Store

log = logging.getLogger(__name__)

REDACTION_REASON = "expired"  # a fixed word: never anything from the message
# How often a redaction the homeserver accepted but does not show is retried.
MAX_UNCONFIRMED = 5
MAX_BACKOFF_MS = 60_000
# After a 429, redactions go one at a time until this many in a row were accepted:
# workers released together when a pause ends would mostly earn 429s again.
CALM_AFTER = 10
# Short re-checks after a 200, before treating the redaction as unconfirmed.
_VERIFY_DELAYS_S = (0.0, 0.2, 0.5)
# How long to wait for a redaction's echo before fetching the event instead.
ECHO_WAIT_MS = 10_000
# Besides the first in each room, every this-many-th echo-confirmed redaction is
# fetched as well, to notice a homeserver whose 200s and echoes do not redact.
SPOT_CHECK_EVERY = 20
# Echoes that arrive before the worker recorded its redaction as sent: a worker
# finds its echo within a moment, so this bound is only against leaks.
_ECHO_MEMORY = 10_000


class Outcome(Enum):
    OK = "ok"  # the request was accepted
    REDACTED = "redacted"  # fetched: content is empty
    PRESENT = "present"  # fetched: content still there
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"  # network error, timeout, 5xx


@dataclass(frozen=True)
class Reply:
    outcome: Outcome
    retry_after_ms: int | None = None
    detail: str = ""
    event_id: str | None = None  # for OK: the redaction event the homeserver created


class Transport(Protocol):
    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply: ...

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        """REDACTED, PRESENT, NOT_FOUND or an error outcome."""
        ...


class Verdict(Enum):
    DONE = "done"
    SENT = "sent"  # accepted: wait for the echo until retry_at, then fetch
    RETRY = "retry"
    PARK = "park"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_at: int | None = None
    reason: str = ""
    redaction_id: str | None = None  # for SENT: the echo to wait for


@dataclass
class RedactionStats:
    """In-memory counters, read by status, logs and metrics."""

    done: int = 0
    echoed: int = 0  # of done: confirmed by the echo, without a fetch
    fetches: int = 0  # GETs of a redacted event, to check it is empty
    rate_limited: int = 0
    retries: int = 0
    failures: int = 0
    parked: int = 0


class Echoes:
    """Echoes that arrived while a worker still held their event: target event id ->
    the redaction event's id, for that worker to find."""

    def __init__(self, trusted: bool) -> None:
        self._seen: OrderedDict[str, str] = OrderedDict()
        # False once a fetch found content after a 200: then no echo confirms anything.
        self.trusted = trusted

    def add(self, target: str, redaction_id: str) -> None:
        self._seen[target] = redaction_id
        if len(self._seen) > _ECHO_MEMORY:
            self._seen.popitem(last=False)

    def take(self, target: str) -> str | None:
        return self._seen.pop(target, None)


def backoff_ms(attempts: int) -> int:
    return int(min(MAX_BACKOFF_MS, 1000 * 2 ** max(0, attempts - 1)))


class Redactor:
    def __init__(
        self,
        store: Store,
        transport: Transport,
        clock: Clock,
        bot_user_id: str,
        needs_power: Callable[[str], bool] | None = None,
        *,
        echo_wait_ms: int | None = None,
    ) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._bot = bot_user_id
        # Whether redacting this sender's events needs the room's redact power level:
        # the bot needs it for everyone but itself; the bridge only for remote senders,
        # since it acts as each local sender.
        self._needs_power = needs_power or (lambda sender: sender != bot_user_id)
        self.stats = RedactionStats()
        # The homeserver rate-limits per sender: one 429 pauses every worker.
        self.paused_until_ms = 0
        self.throttled = False  # since a 429, until CALM_AFTER accepted in a row
        self._accepted_in_a_row = 0
        self.echoes = Echoes(trusted=echo_wait_ms is not None)
        self._echo_wait_ms = echo_wait_ms
        self._accepted = 0
        self._spot_checked_rooms: set[str] = set()

    @property
    def trusts_echoes(self) -> bool:
        return self.echoes.trusted

    async def process(self, event: DueEvent, can_redact_others: bool) -> Decision:
        if event.attempts > 0:
            # Sent before (perhaps just before a crash, or its echo is overdue): look
            # before sending again, and before parking what may be gone already.
            seen = await self._check(event)
            if seen.outcome is Outcome.REDACTED:
                return Decision(Verdict.DONE)
        if self._needs_power(event.sender) and not can_redact_others:
            return Decision(Verdict.PARK, reason="no power to redact others' events")
        txn_id = event.txn_id or f"lethe.{secrets.token_hex(12)}"
        await self._store.record_txn(event.event_id, txn_id)
        reply = await self._transport.redact(event.room_id, event.event_id, event.sender, txn_id)
        if reply.outcome is Outcome.OK:
            self._accepted_in_a_row += 1
            if self._accepted_in_a_row >= CALM_AFTER:
                self.throttled = False
            if self._wait_for_echo(event, reply):
                assert self._echo_wait_ms is not None
                return Decision(
                    Verdict.SENT, retry_at=self._clock.now_ms() + self._echo_wait_ms,
                    redaction_id=reply.event_id,
                )
            return await self._verify(event)
        return self._on_error(event, reply)

    def _wait_for_echo(self, event: DueEvent, reply: Reply) -> bool:
        """Whether the echo may confirm this redaction, or it must be fetched now."""
        if not self.trusts_echoes or reply.event_id is None or event.attempts > 0:
            return False  # a retry is fetched: its echo did not come, or it failed before
        self._accepted += 1
        if event.room_id not in self._spot_checked_rooms:
            self._spot_checked_rooms.add(event.room_id)
            return False
        return self._accepted % SPOT_CHECK_EVERY != 0

    async def _check(self, event: DueEvent) -> Reply:
        self.stats.fetches += 1
        return await self._transport.check(event.room_id, event.event_id, event.sender)

    async def _verify(self, event: DueEvent) -> Decision:
        reply = Reply(Outcome.PRESENT)
        for delay in _VERIFY_DELAYS_S:
            if delay:
                await asyncio.sleep(delay)
            reply = await self._check(event)
            if reply.outcome is Outcome.REDACTED:
                return Decision(Verdict.DONE)
            if reply.outcome is not Outcome.PRESENT:
                break
        if reply.outcome is Outcome.NOT_FOUND:
            # The homeserver took the redaction of an event it cannot show: unconfirmed.
            return Decision(Verdict.FAIL, reason="unconfirmed: the homeserver does not know it")
        if reply.outcome is Outcome.PRESENT:
            if self.echoes.trusted:
                self.echoes.trusted = False
                log.warning("the homeserver accepted a redaction in %s but still serves the "
                            "event's content; from now on every redaction is fetched to "
                            "confirm it", event.room_id)
            if event.attempts + 1 >= MAX_UNCONFIRMED:
                return Decision(Verdict.FAIL, reason="unconfirmed: content still present")
            return self._retry(event, backoff_ms(event.attempts + 1), "content still present")
        return self._on_error(event, reply)

    def _on_error(self, event: DueEvent, reply: Reply) -> Decision:
        now = self._clock.now_ms()
        if reply.outcome is Outcome.RATE_LIMITED:
            self.stats.rate_limited += 1
            wait = max(reply.retry_after_ms or 1000, 100)
            self.throttled, self._accepted_in_a_row = True, 0
            self.paused_until_ms = max(self.paused_until_ms, now + wait)
            return self._retry(event, wait, "rate limited")
        if reply.outcome is Outcome.FORBIDDEN:
            if not self._needs_power(event.sender):
                return self._retry(event, backoff_ms(event.attempts + 1), "forbidden")
            return Decision(Verdict.PARK, reason=reply.detail or "forbidden")
        if reply.outcome is Outcome.NOT_FOUND:
            return Decision(Verdict.FAIL, reason=reply.detail or "event not found")
        return self._retry(event, backoff_ms(event.attempts + 1), reply.detail or "transient error")

    def _retry(self, event: DueEvent, wait_ms: int, reason: str) -> Decision:
        self.stats.retries += 1
        return Decision(Verdict.RETRY, retry_at=self._clock.now_ms() + wait_ms, reason=reason)
