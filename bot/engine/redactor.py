"""Redact one due event, confirm it is gone, and decide what happens on failure.

The Matrix I/O is behind ``Transport`` (the nio bot and the appservice bridge
each provide one). A 200 from ``/redact`` proves nothing (moderators get 200 for
unknown event ids). Two things count as proof:

- a fetch of the event that shows empty content (one request per redaction, about
  a third of what the redaction itself costs the homeserver), or
- the echo: the redaction event whose id the homeserver returned comes back
  through the front's event stream (sync, or an appservice push), which shows the
  homeserver persisted it. It costs nothing extra.

A front whose event stream carries Lethe's own redactions sets ``echo_wait_ms``:
then echoes confirm (echoes.py decides which redactions wait for one), and those
whose echo does not come within ``echo_wait_ms`` are fetched instead.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from bot.engine.clock import Clock
from bot.engine.echoes import EchoConfirmation
from bot.engine.model import DueEvent
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)

REDACTION_REASON = "expired"  # a fixed word: never anything from the message
# How often a redaction the homeserver accepted but does not show is retried.
MAX_UNCONFIRMED = 5
MAX_BACKOFF_MS = 60_000
# After a 429, redactions go one at a time until this many in a row were accepted:
# workers released together when a pause ends would mostly earn 429s again.
CALM_AFTER = 10
# Short re-checks after a 200, before treating the redaction as unconfirmed.
VERIFY_DELAYS_S = (0.0, 0.2, 0.5)
# How long to wait for a redaction's echo before fetching the event instead.
ECHO_WAIT_MS = 10_000


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


class DelayHandler(Protocol):
    """Before redacting an event the homeserver may hold a delayed redaction of
    (bot/engine/delayed.py, Takeover): a decision that ends the attempt, or None."""

    async def before_redacting(self, event: DueEvent,
                               fetch: Callable[[], Awaitable[Reply]]) -> Decision | None: ...


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
    fired: bool = False  # for DONE: by the homeserver's delayed redaction


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
    # Delayed redactions (bot/engine/delayed.py): scheduled with the homeserver, seen
    # fired (the homeserver redacted on Lethe's behalf), and cancelled.
    delayed_armed: int = 0
    delayed_fired: int = 0
    delayed_cancelled: int = 0


async def fetch_until_redacted(
    check: Callable[[], Awaitable[Reply]], delays_s: tuple[float, ...] = VERIFY_DELAYS_S
) -> Reply:
    """After a ``200`` from /redact: fetch the event, shortly apart, until it shows
    redacted or something other than its content (the last reply says which). A 200
    alone proves nothing; every redact-and-verify in Lethe goes through here."""
    reply = Reply(Outcome.PRESENT)
    for delay in delays_s:
        if delay:
            await asyncio.sleep(delay)
        reply = await check()
        if reply.outcome is not Outcome.PRESENT:
            break
    return reply


def backoff_ms(attempts: int) -> int:
    return int(min(MAX_BACKOFF_MS, 1000 * 2 ** max(0, attempts - 1)))


class Redactor:
    def __init__(
        self,
        store: StoreBackend,
        transport: Transport,
        clock: Clock,
        bot_user_id: str,
        is_other_sender: Callable[[str], bool] | None = None,
        *,
        echo_wait_ms: int | None = None,
        echoes: EchoConfirmation | None = None,
        delays: DelayHandler | None = None,
    ) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._bot = bot_user_id
        # Whether redacting this sender's events takes can_redact_others: the bot needs
        # it for everyone but itself; the bridge only for remote senders, since it acts
        # as each local sender.
        self._is_other_sender = is_other_sender or (lambda sender: sender != bot_user_id)
        self.stats = RedactionStats()
        # The homeserver rate-limits per sender: one 429 pauses every worker.
        self._paused_until_ms = 0
        self._throttled = False  # since a 429, until CALM_AFTER accepted in a row
        self._accepted_in_a_row = 0
        self.echoes = echoes or EchoConfirmation(trusted=echo_wait_ms is not None)
        self._echo_wait_ms = echo_wait_ms
        self.delays = delays

    @property
    def trusts_echoes(self) -> bool:
        return self.echoes.trusted

    @property
    def paused_until_ms(self) -> int:
        """Until when a 429 holds every worker back (0: never)."""
        return self._paused_until_ms

    def workers(self, limit: int) -> int:
        """How many redactions may be under way at once: one, while 429s are recent."""
        return 1 if self._throttled else limit

    async def process(self, event: DueEvent, can_redact_others: bool) -> Decision:
        if event.delay is not None and self.delays is not None:
            decided = await self.delays.before_redacting(event, lambda: self._check(event))
            if decided is not None:
                return decided
        if event.attempts > 0:
            # Sent before (perhaps just before a crash, or its echo is overdue): look
            # before sending again, and before parking what may be gone already.
            seen = await self._check(event)
            if seen.outcome is Outcome.REDACTED:
                return Decision(Verdict.DONE)
        if self._is_other_sender(event.sender) and not can_redact_others:
            return Decision(Verdict.PARK, reason="no power to redact others' events")
        txn_id = event.txn_id or f"lethe.{secrets.token_hex(12)}"
        async with self._store.transaction() as tx:
            await tx.record_txn(event.event_id, txn_id)
        reply = await self._transport.redact(event.room_id, event.event_id, event.sender, txn_id)
        if reply.outcome is Outcome.OK:
            self._accepted_in_a_row += 1
            if self._accepted_in_a_row >= CALM_AFTER:
                self._throttled = False
            if self.echoes.wait_for(event.room_id, reply.event_id, event.attempts):
                assert self._echo_wait_ms is not None
                return Decision(
                    Verdict.SENT, retry_at=self._clock.now_ms() + self._echo_wait_ms,
                    redaction_id=reply.event_id,
                )
            return await self._verify(event, reply.event_id)
        return self._on_error(event, reply)

    async def _check(self, event: DueEvent) -> Reply:
        self.stats.fetches += 1
        return await self._transport.check(event.room_id, event.event_id, event.sender)

    async def _verify(self, event: DueEvent, redaction_id: str | None) -> Decision:
        reply = await fetch_until_redacted(lambda: self._check(event))
        if reply.outcome is Outcome.REDACTED:
            return Decision(Verdict.DONE)
        if reply.outcome is Outcome.NOT_FOUND:
            # The homeserver took the redaction of an event it does not show. In a room
            # whose policy is mirrored into m.room.retention, that is what Synapse does
            # with an expired event (it hides it from every client, Lethe too, from its
            # max_lifetime on): the echo of the redaction it accepted decides there, where
            # echoes count. Elsewhere, or without an echo: unconfirmed.
            if (self._echo_wait_ms is not None and self.echoes.trusted
                    and redaction_id is not None and event.attempts + 1 < MAX_UNCONFIRMED
                    and await self._mirrored(event.room_id)):
                return Decision(Verdict.SENT, retry_at=self._clock.now_ms() + self._echo_wait_ms,
                                redaction_id=redaction_id)
            return Decision(Verdict.FAIL, reason="unconfirmed: the homeserver does not know it")
        if reply.outcome is Outcome.PRESENT:
            if self.echoes.distrust():
                log.warning("the homeserver accepted a redaction in %s but still serves the "
                            "event's content; from now on every redaction is fetched to "
                            "confirm it", event.room_id)
            if event.attempts + 1 >= MAX_UNCONFIRMED:
                return Decision(Verdict.FAIL, reason="unconfirmed: content still present")
            return self._retry(event, backoff_ms(event.attempts + 1), "content still present")
        return self._on_error(event, reply)

    async def _mirrored(self, room_id: str) -> bool:
        room = await self._store.get_room(room_id)
        return room is not None and room.policy.mirror_retention

    def _on_error(self, event: DueEvent, reply: Reply) -> Decision:
        now = self._clock.now_ms()
        if reply.outcome is Outcome.RATE_LIMITED:
            self.stats.rate_limited += 1
            wait = max(reply.retry_after_ms or 1000, 100)
            self._throttled, self._accepted_in_a_row = True, 0
            self._paused_until_ms = max(self._paused_until_ms, now + wait)
            return self._retry(event, wait, "rate limited")
        if reply.outcome is Outcome.FORBIDDEN:
            if not self._is_other_sender(event.sender):
                return self._retry(event, backoff_ms(event.attempts + 1), "forbidden")
            return Decision(Verdict.PARK, reason=reply.detail or "forbidden")
        if reply.outcome is Outcome.NOT_FOUND:
            return Decision(Verdict.FAIL, reason=reply.detail or "event not found")
        return self._retry(event, backoff_ms(event.attempts + 1), reply.detail or "transient error")

    def _retry(self, event: DueEvent, wait_ms: int, reason: str) -> Decision:
        self.stats.retries += 1
        return Decision(Verdict.RETRY, retry_at=self._clock.now_ms() + wait_ms, reason=reason)
