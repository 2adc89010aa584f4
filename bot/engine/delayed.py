"""Delayed redactions: the homeserver redacts an event at its deadline by itself, so
deletion no longer depends on Lethe running.

Where the homeserver offers delayed events (MSC4140: ``PUT /send`` with
``org.matrix.msc4140.delay`` answers a ``delay_id`` and sends the event later) and
redactions through ``/send`` (MSC4169), Lethe schedules, for each message whose
deadline it knows, an ``m.room.redaction`` for that time, in the background
(bot/engine/arming.py), and keeps the delay id with the event (DelayState). Then:

- its echo (the redaction, sent by the account it was scheduled as, and showing its
  delay id or coming no earlier than its time) confirms the event like Lethe's own
  redaction (echoes.py);
- if none comes by ``GRACE_MS`` after its time, Lethe takes over: it cancels the
  delayed redaction first (``cancel_first``) and redacts as before. A cancel that
  finds nothing means it fired (the event then shows redacted: done) or never came
  to be (Lethe redacts);
- when the deadline moves earlier (an after_read message read before its cap, or its
  parent went), it is replaced (cancelled, then scheduled for the new time) while
  there is time, else cancelled first by the redactor; when the event goes another
  way (redacted by somebody else, its room forgotten) it is cancelled through a
  durable queue, so that nothing is redacted twice.

Nothing here speaks HTTP: a front's Transport also implements ``DelayedTransport``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from bot.engine.clock import Clock
from bot.engine.model import DelayRef, DelayState, DueEvent
from bot.engine.redactor import (
    Decision,
    Outcome,
    RedactionStats,
    Reply,
    Verdict,
    backoff_ms,
    fetch_until_redacted,
)
from bot.engine.store import StoreBackend

# Lethe takes over a delayed redaction whose echo has not come this long after its time.
GRACE_MS = 10_000
# A message due sooner than this is not worth scheduling with the homeserver.
MIN_LEAD_MS = 10_000
# A deadline that moved earlier by more than this replaces the delayed redaction
# (sql.STALE and the migration's events_stale index repeat it).
STALE_MS = 1_000
# How long the redactor waits for a scheduling request still under way.
ARMING_WAIT_MS = 5_000
# Synapse marks every delayed event that is due as being sent, then sends them one
# after another (about 30 a second on a small machine): a cancel then finds nothing
# while the redaction is still to come. Until this long after its time, a delayed
# redaction that is neither cancellable nor seen is waited for, never sent again.
FIRING_WINDOW_MS = 60_000
FIRING_RECHECK_MS = 5_000
# At most this many delayed redactions are scheduled to fire in any one second, so
# that the homeserver sends them on time; the rest Lethe redacts itself.
FIRE_BUDGET_PER_S = 20

META_KEY = "delayed_redactions"  # what the front found on its last start (for the CLI)
NOT_CHECKED = "not known yet: the homeserver has not answered"
DISABLED = "turned off in the config (redaction.delayed: off)"


class ArmOutcome(Enum):
    ARMED = "armed"  # delay_id
    TOO_LONG = "too_long"  # over the server's maximum delay (max_delay_ms when it says)
    FULL = "full"  # the account holds as many delayed events as the server allows
    RATE_LIMITED = "rate_limited"
    REFUSED = "refused"  # not for this event (403, 400): Lethe redacts it itself
    UNSUPPORTED = "unsupported"  # the homeserver does not (or no longer) offer it
    TRANSIENT = "transient"  # no answer: it may or may not exist now


@dataclass(frozen=True)
class ArmReply:
    outcome: ArmOutcome
    delay_id: str | None = None
    max_delay_ms: int | None = None
    retry_after_ms: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Listed:
    """A delayed redaction in an account's list (``GET .../delayed_events``)."""

    delay_id: str
    room_id: str
    target: str
    reason: str | None
    fires_at: int | None  # the homeserver's clock


@dataclass(frozen=True)
class Support:
    offered: bool
    reason: str = ""  # why not, for status and doctor


@runtime_checkable
class DelayedTransport(Protocol):
    """What delayed redactions need of a front (bot/matrix/transport.py)."""

    @property
    def own_user(self) -> str:
        """The front's own account (the bot, or the bridge's bot)."""
        ...

    def delayed_user(self, sender: str) -> str:
        """The account a delayed redaction of ``sender``'s event is scheduled as."""
        ...

    def slots(self, user: str) -> int | None:
        """At most how many delayed redactions to hold for ``user`` (None: what the
        server allows; the bridge leaves people room for their own)."""
        ...

    async def delayed_support(self) -> Support | None:
        """None: the homeserver did not answer."""
        ...

    async def arm(self, room_id: str, event_id: str, sender: str, txn_id: str,
                  delay_ms: int) -> ArmReply: ...

    async def cancel_delayed(self, delay_id: str, user: str) -> Reply:
        """OK, NOT_FOUND (fired, cancelled or never made), or an error outcome."""
        ...

    async def list_delayed(self, user: str) -> list[Listed] | None:
        """``user``'s delayed redactions; None: it could not be listed."""
        ...


class Settled(Enum):
    """What ``cancel_first`` found."""

    CANCELLED = "cancelled"  # it will not fire: Lethe may redact
    FIRED = "fired"  # it is gone and the event shows redacted: done
    MISSING = "missing"  # it is gone (or never was) and the event is not redacted
    UNKNOWN = "unknown"  # no answer: it may still fire, so send nothing now


@dataclass(frozen=True)
class Cancel:
    settled: Settled
    reply: Reply  # the cancel's (or the fetch's) answer, for retry_after and the log


async def cancel_first(api: DelayedTransport | None, ref: DelayRef,
                       fetch: Callable[[], Awaitable[Reply]]) -> Cancel:
    """Cancel a delayed redaction before Lethe redacts the event itself, and say what
    became of it."""
    if api is None or ref.delay_id is None:
        reply = Reply(Outcome.NOT_FOUND, detail="nothing to cancel with")
    else:
        reply = await api.cancel_delayed(ref.delay_id, ref.user_id)
    if reply.outcome is Outcome.OK:
        return Cancel(Settled.CANCELLED, reply)
    if reply.outcome in (Outcome.RATE_LIMITED, Outcome.TRANSIENT):
        return Cancel(Settled.UNKNOWN, reply)
    # Not found (or refused: only its owner's server could tell): it fired, or it
    # never came to be. The event says which; a redaction sent a moment ago may still
    # be on its way into the room, hence the short re-checks.
    seen = await fetch_until_redacted(fetch)
    if seen.outcome is Outcome.REDACTED:
        return Cancel(Settled.FIRED, seen)
    if seen.outcome in (Outcome.PRESENT, Outcome.NOT_FOUND, Outcome.FORBIDDEN):
        return Cancel(Settled.MISSING, seen)
    return Cancel(Settled.UNKNOWN, seen)


class Why(Enum):
    """Whether delayed redactions are in use, or why not (a label for metrics)."""

    IN_USE = "in_use"
    OFF_IN_CONFIG = "off_in_config"
    NOT_OFFERED = "not_offered"  # by the homeserver
    NOT_CHECKED = "not_checked"  # the homeserver has not answered yet
    NOT_AVAILABLE = "not_available"  # to this front


@dataclass(frozen=True)
class DelayedStatus:
    """Whether the homeserver redacts on time while Lethe is down, and if not, why."""

    why: Why
    reason: str  # "" when in use
    armed: int  # events the homeserver holds a delayed redaction of (or is being asked)
    cancels: int  # delayed redactions queued for cancelling
    max_delay_ms: int | None  # the server's maximum delay, once learnt
    full: tuple[str, ...] = ()  # accounts at the server's (or Lethe's) limit now

    @property
    def in_use(self) -> bool:
        return self.why is Why.IN_USE


def may_be_firing(at: int, now: int) -> bool:
    """Whether a delayed redaction due at ``at`` that can no longer be cancelled may
    still be on its way (see FIRING_WINDOW_MS)."""
    return at - STALE_MS <= now < at + FIRING_WINDOW_MS


class Takeover:
    """The redactor's part: before Lethe redacts an event itself, what becomes of the
    delayed redaction the homeserver holds (or may hold) for it."""

    def __init__(self, store: StoreBackend, api: DelayedTransport | None, clock: Clock,
                 stats: RedactionStats, slot_freed: Callable[[str], None]) -> None:
        self._store = store
        self._api = api
        self._clock = clock
        self._stats = stats
        self._slot_freed = slot_freed
        self._unanswered: dict[str, int] = {}  # event -> cancels in a row with no answer

    async def before_redacting(self, event: DueEvent,
                               fetch: Callable[[], Awaitable[Reply]]) -> Decision | None:
        """A decision that ends this attempt, or None: go on and redact."""
        delay = event.delay
        if delay is None or delay.state is DelayState.NEVER:
            return None
        now = self._clock.now_ms()
        if delay.state is DelayState.ARMING:
            # Its request is under way (or its answer was lost in a crash, which the
            # start-up reconciliation settles): redacting now could redact twice.
            return Decision(Verdict.RETRY, retry_at=now + ARMING_WAIT_MS,
                            reason="its delayed redaction is still being scheduled")
        assert delay.at is not None and delay.by is not None
        if delay.at - STALE_MS <= now < delay.at + GRACE_MS:
            return Decision(Verdict.RETRY, retry_at=delay.at + GRACE_MS,
                            reason="the homeserver's delayed redaction is due now")
        ref = DelayRef(delay.delay_id, delay.by, event.room_id, event.event_id)
        done = await cancel_first(self._api, ref, fetch)
        if done.settled is Settled.MISSING and may_be_firing(delay.at, now):
            return Decision(Verdict.RETRY, retry_at=now + FIRING_RECHECK_MS,
                            reason="the homeserver may still be sending its delayed redaction")
        if done.settled is Settled.UNKNOWN:
            if len(self._unanswered) > 10_000:  # rows that went another way meanwhile
                self._unanswered.clear()
            tries = self._unanswered[event.event_id] = self._unanswered.get(event.event_id, 0) + 1
            wait = (done.reply.retry_after_ms if done.reply.outcome is Outcome.RATE_LIMITED
                    else None) or backoff_ms(tries)
            self._stats.retries += 1
            return Decision(Verdict.RETRY, retry_at=now + wait,
                            reason="could not cancel its delayed redaction first")
        self._unanswered.pop(event.event_id, None)
        self._slot_freed(delay.by)
        if done.settled is Settled.FIRED:
            self._stats.delayed_fired += 1
            return Decision(Verdict.DONE, fired=True)
        self._stats.delayed_cancelled += done.settled is Settled.CANCELLED
        async with self._store.transaction() as tx:
            await tx.disarm(event.event_id, never=True, delay_id=delay.delay_id)
        return None
