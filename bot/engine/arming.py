"""The background task that schedules delayed redactions with the homeserver
(bot/engine/delayed.py says what they are), replaces those whose deadline moved
earlier, and works the durable queue of those to cancel.

It is owned by the Engine, woken by each ingest, and keeps out of the way of what
is due: it sends one request at a time, and none while the scheduler has a
backlog or the homeserver asked Lethe to slow down. Within the homeserver's
limits: a deadline beyond its maximum delay (learnt from its refusal) is scheduled
once it comes within reach; when an account holds as many delayed events as the
server allows, the earliest deadlines keep their slots (a later one gives way to
an earlier) and nothing is tried for it until a slot frees or the server's
``retry_after_ms`` passes. On start it reconciles with each account's list
(``reconcile.py``): a request whose answer a crash lost is adopted or undone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable

from bot.engine.clock import Clock
from bot.engine.delayed import (
    DISABLED,
    FIRE_BUDGET_PER_S,
    GRACE_MS,
    META_KEY,
    MIN_LEAD_MS,
    NOT_CHECKED,
    ArmOutcome,
    DelayedStatus,
    DelayedTransport,
    Settled,
    Support,
    Why,
    cancel_first,
)
from bot.engine.model import ArmCandidate, DelayRef, DueEvent
from bot.engine.reconcile import Reconciler
from bot.engine.redactor import Outcome, RedactionStats, Transport, backoff_ms
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)

BATCH = 50
SCAN_LIMIT = 200  # candidates looked at per pass when accounts are full
IDLE_RECHECK_MS = 3_600_000
FULL_RETRY_MS = 60_000  # a full account without a retry_after_ms is tried again then
# A later delayed redaction gives its slot to an earlier deadline only if that is at
# least this much earlier (so that nearly equal deadlines do not trade slots).
SWAP_MARGIN_MS = 60_000
_FOREVER = 2**62


Backlog = Callable[[], bool]
OnFired = Callable[[DueEvent, int], None]


class Armer:
    def __init__(self, store: StoreBackend, api: DelayedTransport, transport: Transport,
                 clock: Clock, stats: RedactionStats, *, enabled: bool,
                 backlogged: Backlog, wait_drained: Callable[[], Awaitable[None]],
                 paused_until: Callable[[], int], on_fired: OnFired) -> None:
        self._store = store
        self._api = api
        self._clock = clock
        self.stats = stats
        self.enabled = enabled
        self._backlogged = backlogged
        self._wait_drained = wait_drained
        self._paused_until = paused_until
        self.support: Support | None = None
        self.max_delay_ms: int | None = None
        self._full_until: dict[str, int] = {}
        # Delayed redactions scheduled per second they fire in (FIRE_BUDGET_PER_S);
        # not lowered when one is cancelled: an estimate on the safe side.
        self._fire_seconds: dict[int, int] = {}
        self._held_until = 0  # after a 429 or no answer: nothing is sent before then
        self._failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconciler = Reconciler(store, api, transport, clock, stats, on_fired, GRACE_MS)

    # --- what the engine calls ------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lethe-delayed-redactions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def slot_freed(self, user: str | None) -> None:
        """One of ``user``'s delayed redactions fired or was cancelled."""
        if user is not None and self._full_until.pop(user, None) is not None:
            self._wake.set()

    @property
    def in_use(self) -> bool:
        return self.enabled and self.support is not None and self.support.offered

    @property
    def why(self) -> Why:
        if not self.enabled:
            return Why.OFF_IN_CONFIG
        if self.support is None:
            return Why.NOT_CHECKED
        return Why.IN_USE if self.support.offered else Why.NOT_OFFERED

    @property
    def reason(self) -> str:
        if not self.enabled:
            return DISABLED
        if self.support is None:
            return NOT_CHECKED
        return self.support.reason

    async def status(self) -> DelayedStatus:
        queued, _ = await self._store.cancels()
        now = self._clock.now_ms()
        full = tuple(sorted(u for u, t in self._full_until.items() if t > now))
        return DelayedStatus(self.why, "" if self.in_use else self.reason,
                             await self._store.armed_count(), queued, self.max_delay_ms, full)

    # --- the loop ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # Lethe still redacts by itself; say why nothing is scheduled
            log.exception("delayed redactions stopped")
            raise

    async def _loop(self) -> None:
        if self.enabled:
            await self._probe()
        async with self._store.transaction() as tx:
            await tx.set_meta(META_KEY, json.dumps({
                "in_use": self.in_use, "reason": "" if self.in_use else self.reason,
                "checked_at": self._clock.now_ms()}))
        self._fire_seconds = await self._store.fire_seconds(self._clock.now_ms())
        while True:
            self._wake.clear()
            now = self._clock.now_ms()
            hold = max(self._held_until, self._paused_until())
            if hold > now:
                await self._clock.sleep_until(hold, asyncio.Event())
                continue
            if self._backlogged():
                await self._wait_drained()  # what is due first
                continue
            try:
                worked = await self._pass(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep going: a bug here must not stop the redactions
                log.exception("scheduling delayed redactions failed")
                self._hold_back(now, None)
                worked = True
            if not worked:
                await self._clock.sleep_until(await self._next_time(now), self._wake)

    async def _pass(self, now: int) -> bool:
        """One batch of work; whether anything was sent (then the loop goes on at once)."""
        if not self.reconciler.done:
            ok = await self.reconciler.run(self._api.own_user if self.in_use else None)
            if not ok:
                self._hold_back(now, None)
            return True
        if await self._cancel_some(now):
            return True
        if not self.in_use:
            return False
        return await self._replace_some(now) or await self._arm_some(now)

    async def _probe(self) -> None:
        """Ask the homeserver what it offers, until it answers."""
        attempts = 0
        while True:
            support = await self._api.delayed_support()
            if support is not None:
                break
            attempts += 1
            await self._clock.sleep_until(self._clock.now_ms() + backoff_ms(attempts),
                                          asyncio.Event())
        self.support = support
        if self.in_use:
            log.info("delayed redactions in use: the homeserver redacts each message at "
                     "its deadline even while Lethe is stopped")
        else:
            log.info("delayed redactions not in use: %s", self.reason)

    def _hold_back(self, now: int, retry_after_ms: int | None) -> None:
        self._failures += 1
        self._held_until = now + (retry_after_ms or backoff_ms(self._failures))

    def _answered(self) -> None:
        self._failures = 0

    def _yield(self) -> bool:
        """Whether to stop sending for now: what is due comes first."""
        return self._backlogged() or self._paused_until() > self._clock.now_ms()

    async def _next_time(self, now: int) -> int:
        times = [now + IDLE_RECHECK_MS]
        queued, next_cancel = await self._store.cancels()
        if queued and next_cancel is not None:
            times.append(next_cancel)
        if self.in_use:
            self._fire_seconds = {s: n for s, n in self._fire_seconds.items() if s >= now // 1000}
            self._full_until = {u: t for u, t in self._full_until.items() if t > now}
            times += [t for t in self._full_until.values() if t < _FOREVER]
            low = now + MIN_LEAD_MS
            first = await self._store.next_unarmed(low)
            if (first is not None and self.max_delay_ms is not None
                    and first > now + self.max_delay_ms):
                times.append(first - self.max_delay_ms)
        return max(now + 1, min(times))

    # --- cancelling ------------------------------------------------------------------

    async def _cancel_some(self, now: int) -> bool:
        jobs = await self._store.due_cancels(now, BATCH)
        if any(job.ref.delay_id is None for job in jobs):
            self.reconciler.done = False  # found by their targets in the accounts' lists
        sent = False
        for job in (j for j in jobs if j.ref.delay_id is not None):
            if self._yield():
                return True
            assert job.ref.delay_id is not None
            reply = await self._api.cancel_delayed(job.ref.delay_id, job.ref.user_id)
            sent = True
            async with self._store.transaction() as tx:
                if reply.outcome in (Outcome.RATE_LIMITED, Outcome.TRANSIENT):
                    await tx.cancel_later(job.job_id, now + backoff_ms(job.tries + 1))
                else:  # cancelled, or nothing there to cancel any more
                    await tx.cancel_done(job.job_id)
            if reply.outcome is Outcome.OK:
                self.stats.delayed_cancelled += 1
                log.info("cancelled the delayed redaction of %s in %s", job.ref.target,
                         job.ref.room_id)
            if reply.outcome in (Outcome.RATE_LIMITED, Outcome.TRANSIENT):
                self._hold_back(now, reply.retry_after_ms)
                return True
            self._answered()
            self.slot_freed(job.ref.user_id)
        return sent or not self.reconciler.done

    # --- replacing those whose deadline moved earlier --------------------------------

    async def _replace_some(self, now: int) -> bool:
        rows = await self._store.stale_delays(now + MIN_LEAD_MS, BATCH)
        for row in rows:
            if self._yield():
                return True
            if not await self._take_back(row):
                return True
        return bool(rows)

    async def _take_back(self, row: ArmCandidate) -> bool:
        """Cancel ``row``'s delayed redaction so that it can get another (or none);
        False when the homeserver did not answer."""
        delay = row.delay
        assert delay is not None and delay.by is not None
        ref = DelayRef(delay.delay_id, delay.by, row.room_id, row.event_id)
        done = await cancel_first(
            self._api, ref, lambda: self.reconciler.fetch(row.room_id, row.event_id, row.sender))
        now = self._clock.now_ms()
        if done.settled is Settled.UNKNOWN:
            self._hold_back(now, done.reply.retry_after_ms)
            return False
        self._answered()
        self.slot_freed(delay.by)
        if done.settled is Settled.FIRED:
            await self.reconciler.finish_fired(row, now)
            return True
        self.stats.delayed_cancelled += done.settled is Settled.CANCELLED
        async with self._store.transaction() as tx:
            await tx.disarm(row.event_id, never=False, delay_id=delay.delay_id)
        return True

    # --- scheduling ------------------------------------------------------------------

    async def _arm_some(self, now: int) -> bool:
        low = now + MIN_LEAD_MS
        high = None if self.max_delay_ms is None else now + self.max_delay_ms
        scanned = 0
        blocked: set[str] = set()  # accounts with no slot for anything due later
        while scanned < SCAN_LIMIT:
            found = await self._store.arm_candidates(low, high, BATCH)
            for candidate in found:
                if self._yield():
                    return True
                user = self._api.delayed_user(candidate.sender)
                if user in blocked:
                    continue
                if not await self._has_slot(user, candidate):
                    # Candidates come earliest first: none later of ``user`` fits either.
                    blocked.add(user)
                    continue
                await self._arm(candidate, user)
                return True
            if len(found) < BATCH:
                return False
            scanned += len(found)
            low = found[-1].due_at + 1
        return False

    async def _has_slot(self, user: str, candidate: ArmCandidate) -> bool:
        """Whether ``user`` may hold one more, making room by giving back its latest
        delayed redaction when ``candidate`` is due well before it."""
        now = self._clock.now_ms()
        if self._full_until.get(user, 0) <= now:
            self._full_until.pop(user, None)
            slots = self._api.slots(user)
            if slots is None or await self._store.armed_count(by=user) < slots:
                return True
            self._full_until[user] = _FOREVER  # until one of its slots frees
        latest = await self._store.latest_armed(user)
        if (latest is None or latest.delay is None or latest.delay.at is None
                or candidate.due_at > latest.delay.at - SWAP_MARGIN_MS):
            return False
        log.info("giving the delayed redaction slot of %s to the earlier %s",
                 latest.event_id, candidate.event_id)
        return await self._take_back(latest)

    async def _arm(self, candidate: ArmCandidate, user: str) -> None:
        txn_id = f"lethe.delay.{secrets.token_hex(12)}"
        at = candidate.due_at
        second = at // 1000
        if self._fire_seconds.get(second, 0) >= FIRE_BUDGET_PER_S:
            # More would fire in that second than the homeserver sends on time.
            async with self._store.transaction() as tx:
                await tx.leave_to_lethe(candidate.event_id)
            return
        async with self._store.transaction() as tx:
            if not await tx.begin_arm(candidate.event_id, txn_id, user, at):
                return
        delay_ms = max(0, at - self._clock.now_ms())
        reply = await self._api.arm(candidate.room_id, candidate.event_id, candidate.sender,
                                    txn_id, delay_ms)
        now = self._clock.now_ms()
        outcome = reply.outcome
        if outcome is ArmOutcome.TRANSIENT:
            # It may exist now: the account's list says (reconcile), not a guess.
            self.reconciler.done = False
            self._hold_back(now, None)
            return
        self._answered()
        if outcome is ArmOutcome.ARMED:
            assert reply.delay_id is not None
            async with self._store.transaction() as tx:
                if not await tx.armed(candidate.event_id, txn_id, reply.delay_id, GRACE_MS):
                    # The event went while the request was under way.
                    await tx.queue_cancel(DelayRef(reply.delay_id, user, candidate.room_id,
                                                   candidate.event_id))
            self.stats.delayed_armed += 1
            self._fire_seconds[second] = self._fire_seconds.get(second, 0) + 1
            log.debug("the homeserver redacts %s in %s in %.1f s", candidate.event_id,
                      candidate.room_id, delay_ms / 1000)
            return
        async with self._store.transaction() as tx:
            await tx.disarm(candidate.event_id, never=outcome is ArmOutcome.REFUSED)
        if outcome is ArmOutcome.TOO_LONG:
            learnt = reply.max_delay_ms or delay_ms // 2
            self.max_delay_ms = min(learnt, self.max_delay_ms or learnt)
            log.info("the homeserver delays events by at most %.0f s; later deadlines are "
                     "scheduled once within reach", self.max_delay_ms / 1000)
        elif outcome is ArmOutcome.FULL:
            self._full_until[user] = now + (reply.retry_after_ms or FULL_RETRY_MS)
            log.info("%s holds as many delayed events as the homeserver allows; the "
                     "earliest deadlines keep them", user)
        elif outcome is ArmOutcome.RATE_LIMITED:
            self._hold_back(now, reply.retry_after_ms)
        elif outcome is ArmOutcome.UNSUPPORTED:
            self.support = Support(False, reply.detail or "the homeserver refused delayed "
                                   "events")
            log.warning("delayed redactions no longer in use: %s", self.support.reason)
        else:
            log.info("the homeserver will not schedule a redaction of %s (%s); Lethe "
                     "redacts it itself", candidate.event_id, reply.detail)
