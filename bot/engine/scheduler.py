"""One deadline loop and a bounded pool of redaction workers.

The loop sleeps until the earliest due time and is woken whenever something
might have become due sooner (new events, receipts, power regained, a worker
finishing). There is no polling interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from bot.engine.clock import Clock
from bot.engine.echoes import EchoConfirmation
from bot.engine.model import DueEvent
from bot.engine.outage import DatabaseOutage
from bot.engine.redactor import Decision, Redactor, Verdict
from bot.engine.store import StoreBackend, database_unavailable

log = logging.getLogger(__name__)

IDLE_RECHECK_MS = 3_600_000  # with nothing scheduled, look again hourly anyway

PowerLookup = Callable[[str], Awaitable[bool]]
ParkListener = Callable[[str, str], Awaitable[None]]
# Told of each verified redaction: the event and its lag in ms (due time -> verified).
RedactionListener = Callable[[DueEvent, int], None]


class Scheduler:
    def __init__(
        self,
        store: StoreBackend,
        redactor: Redactor,
        echoes: EchoConfirmation,
        clock: Clock,
        can_redact_others: PowerLookup,
        *,
        workers: int = 8,
        on_park: ParkListener | None = None,
    ) -> None:
        self._store = store
        self._redactor = redactor
        self._echoes = echoes
        self._clock = clock
        self._can_redact_others = can_redact_others
        self._limit = workers
        self._on_park = on_park
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._workers: set[asyncio.Task[None]] = set()
        # Workers still talking to the homeserver; the limit bounds these. A worker
        # writing down its outcome no longer holds a slot, so the next due event's
        # request starts while the last one's bookkeeping commits.
        self._requesting = 0
        # Claimed (in flight in the store, so reset on start), waiting for a slot.
        self._claimed: deque[DueEvent] = deque()
        # Set while there is no backlog; see ``backlogged``.
        self._drained = asyncio.Event()
        self._drained.set()
        self.alive = False
        self.last_lag_ms: int | None = None
        self._redaction_listeners: list[RedactionListener] = []
        self._outage = DatabaseOutage("scheduler")

    def wake(self) -> None:
        self._wake.set()

    def observe_redactions(self, listener: RedactionListener) -> None:
        """Fronts hook metrics in here; the engine itself knows nothing of them."""
        self._redaction_listeners.append(listener)

    async def start(self) -> None:
        async with self._store.transaction() as tx:
            await tx.reset_in_flight()
        self._loop_task = asyncio.create_task(self._run(), name="lethe-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._workers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._claimed.clear()
        self._requesting = 0
        self._loop_task = None
        self._set_backlogged(False)
        self.alive = False

    @property
    def in_flight(self) -> int:
        """Redaction requests (and their checks) under way."""
        return self._requesting

    @property
    def backlogged(self) -> bool:
        """More events are due than the workers and the set claimed ahead can hold:
        redaction is running as fast as the homeserver (or the worker limit) lets it,
        so anything else the front asks of the homeserver now slows it down."""
        return not self._drained.is_set()

    async def wait_drained(self) -> None:
        """Return once there is no backlog (at once if there is none)."""
        await self._drained.wait()

    def _set_backlogged(self, backlogged: bool) -> None:
        if backlogged:
            self._drained.clear()
        else:
            self._drained.set()

    async def _run(self) -> None:
        self.alive = True
        try:
            while True:
                try:
                    await self._step()
                    self._outage.ok()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # What is claimed stays claimed; the next step goes on from there.
                    await self._wait_for_database(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler loop failed")
            self.alive = False
            raise

    async def _wait_for_database(self, exc: Exception) -> None:
        """Back off while the database is away; anything else is raised again."""
        wait = self._outage.failed(exc)
        if wait is None:
            raise exc
        await self._clock.sleep_until(self._clock.now_ms() + int(wait * 1000), asyncio.Event())

    async def _step(self) -> None:
        self._wake.clear()
        now = self._clock.now_ms()
        paused = self._redactor.paused_until_ms
        if paused > now:
            await self._clock.sleep_until(paused, asyncio.Event())
            return
        limit = self._redactor.workers(self._limit)
        self._start_claimed(limit)
        # Claim what the free slots need and, under load, a slot-set ahead: a
        # request ending then starts the next at once, with no database round
        # trip between them.
        want = (limit - self._requesting) + limit - len(self._claimed)
        if want > 0 and (self._requesting < limit or self.backlogged):
            batch = await self._claim(now, want)
            self._claimed.extend(batch)
            self._start_claimed(limit)
            # A full batch may have left more due rows behind, beyond the slots
            # and the set ahead: a backlog. A short one did not.
            self._set_backlogged(len(batch) == want)
            if len(batch) == want:
                return
        if self._requesting >= limit:
            await self._wake.wait()  # a worker's request ending wakes us
            return
        next_due = await self._store.next_due()
        deadline = next_due if next_due is not None else now + IDLE_RECHECK_MS
        await self._clock.sleep_until(deadline, self._wake)

    def _start_claimed(self, limit: int) -> None:
        while self._requesting < limit and self._claimed:
            self._spawn(self._claimed.popleft())

    def _spawn(self, event: DueEvent) -> None:
        self._requesting += 1
        task = asyncio.create_task(self._work(event), name=f"lethe-redact-{event.event_id}")
        self._workers.add(task)
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("redaction worker failed", exc_info=task.exception())

    async def _work(self, event: DueEvent) -> None:
        try:
            decision = await self._redactor.process(
                event, await self._can_redact_others(event.room_id)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep the event: a bug here must not lose a deadline
            if database_unavailable(exc):
                log.warning("redacting %s waits for the database (%s)", event.event_id,
                            type(exc).__name__)
            else:
                log.exception("redacting %s failed unexpectedly", event.event_id)
            decision = Decision(
                Verdict.RETRY, retry_at=self._clock.now_ms() + 30_000, reason=type(exc).__name__
            )
        finally:
            self._requesting -= 1
            self._wake.set()
        # The outcome is written once the database takes it: the row stays in this
        # worker's hands (in flight) meanwhile, so no other worker redacts it again.
        while True:
            try:
                await self._apply(event, decision)
                self._outage.ok()
                return
            except Exception as exc:
                await self._wait_for_database(exc)

    def record_done(self, event: DueEvent, now: int, *, echoed: bool,
                    fired: bool = False) -> None:
        """Count a confirmed redaction (its row is already gone) and tell the listeners.
        ``fired``: the homeserver's delayed redaction did it, at ``now``."""
        stats = self._redactor.stats
        stats.done += 1
        stats.echoed += echoed
        self.last_lag_ms = now - event.deadline
        for listener in self._redaction_listeners:
            listener(event, self.last_lag_ms)
        log.info(
            "redacted %s in %s, %.2f s after its due time%s",
            event.event_id, event.room_id, (now - event.deadline) / 1000,
            " by the homeserver's delayed redaction" if fired
            else " (echo seen)" if echoed else "",
        )

    async def _apply(self, event: DueEvent, decision: Decision) -> None:
        await self._settle(event, decision)
        if decision.verdict is not Verdict.SENT:
            # Only a SENT verdict looks for an echo that came while the worker held the
            # event; drop any other, now that the row is out of the worker's hands.
            self._echoes.released(event.event_id)

    async def _settle(self, event: DueEvent, decision: Decision) -> None:
        now = self._clock.now_ms()
        stats = self._redactor.stats
        if decision.verdict is Verdict.DONE:
            if await self._finish(event, now, fired=decision.fired):
                self.record_done(event, now, echoed=False, fired=decision.fired)
        elif decision.verdict is Verdict.SENT:
            assert decision.retry_at is not None and decision.redaction_id is not None
            async with self._store.transaction() as tx:
                await tx.mark_sent(event.event_id, decision.redaction_id, decision.retry_at)
            # The echo may have come while this worker held the event (see echoes.py).
            echoed = self._echoes.came_while_held(event.event_id, decision.redaction_id)
            if echoed and await self._finish(event, now):
                self.record_done(event, now, echoed=True)
        elif decision.verdict is Verdict.RETRY:
            assert decision.retry_at is not None
            async with self._store.transaction() as tx:
                await tx.reschedule(event.event_id, decision.retry_at)
            log.info(
                "will retry %s in %s in %.1f s: %s",
                event.event_id, event.room_id, (decision.retry_at - now) / 1000, decision.reason,
            )
        elif decision.verdict is Verdict.PARK:
            async with self._store.transaction() as tx:
                await tx.park(event.room_id, event.event_id)
            stats.parked += 1
            log.warning(
                "cannot redact %s in %s (%s); kept until the bot has power",
                event.event_id, event.room_id, decision.reason,
            )
            if self._on_park is not None:
                await self._on_park(event.room_id, decision.reason)
        else:
            async with self._store.transaction() as tx:
                await tx.fail(event.room_id, event.event_id)
            stats.failures += 1
            log.error("giving up on %s in %s: %s", event.event_id, event.room_id, decision.reason)

    async def _claim(self, now: int, limit: int) -> list[DueEvent]:
        async with self._store.transaction() as tx:
            return await tx.claim_due(now, limit)

    async def _finish(self, event: DueEvent, now: int, *, fired: bool = False) -> bool:
        async with self._store.transaction() as tx:
            return await tx.finish_redacted(event.room_id, event.event_id, now, fired=fired)
