"""Reconciling Lethe's delayed redactions with the homeserver's lists of them.

Synapse de-duplicates ``/send`` by transaction id only in memory, so a request whose
answer a crash (or a lost connection) took cannot simply be sent again. Instead,
on start and after such a request, each account involved lists its delayed events,
and for every delayed redaction there:

- the event Lethe was scheduling one for (ARMING) adopts it; so does, for the front's
  own account, an event with none (the database was rebuilt), if it fires in time;
- a second one for the same event, one for an event Lethe no longer tracks (gone
  while its request was under way) or queued for cancelling by its target, is
  cancelled (through the durable queue); on other people's accounts (the bridge)
  only what Lethe itself scheduled is touched.

An event left ARMING whose delayed redaction is not listed either never got one
(it may get another) or already fired while Lethe was away: the event itself says
which, and a fired one is counted once, as done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.engine.clock import Clock
from bot.engine.delayed import DelayedTransport, Listed, may_be_firing
from bot.engine.echoes import ECHO_SLACK_MS
from bot.engine.model import ArmCandidate, CancelJob, DelayRef, DelayState, DueEvent
from bot.engine.redactor import REDACTION_REASON, Outcome, RedactionStats, Reply, Transport
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)

_ALL = 2**62
_MAX_JOBS = 10_000


class Reconciler:
    def __init__(self, store: StoreBackend, api: DelayedTransport, transport: Transport,
                 clock: Clock, stats: RedactionStats,
                 on_fired: Callable[[DueEvent, int], None], grace_ms: int) -> None:
        self._store = store
        self._api = api
        self._transport = transport
        self._clock = clock
        self._stats = stats
        self._on_fired = on_fired
        self._grace_ms = grace_ms
        self.done = False
        self._queued: set[str] = set()  # delay ids queued for cancelling already

    async def fetch(self, room_id: str, event_id: str, sender: str) -> Reply:
        self._stats.fetches += 1
        return await self._transport.check(room_id, event_id, sender)

    async def finish_fired(self, row: ArmCandidate, now: int) -> None:
        """``row``'s delayed redaction was found to have redacted it: done, counted."""
        async with self._store.transaction() as tx:
            finished = await tx.finish_redacted(row.room_id, row.event_id, now, fired=True)
        if finished:
            self._stats.delayed_fired += 1
            deadline = row.due_at if row.delay is None or row.delay.at is None \
                else min(row.due_at, row.delay.at)
            self._on_fired(DueEvent(row.event_id, row.room_id, row.sender, deadline, None, 0,
                                    row.delay), now)

    async def run(self, own_user: str | None) -> bool:
        """Reconcile every account that needs it; False when a list could not be had."""
        arming = await self._store.arming()
        queued = await self._store.due_cancels(_ALL, _MAX_JOBS)
        self._queued = {j.ref.delay_id for j in queued if j.ref.delay_id is not None}
        jobs = [j for j in queued if j.ref.delay_id is None]
        users = {r.delay.by for r in arming if r.delay is not None and r.delay.by}
        users |= {j.ref.user_id for j in jobs}
        if own_user is not None:
            users.add(own_user)
        settled = True
        for user in sorted(users):
            listed = await self._api.list_delayed(user)
            if listed is None:
                log.warning("could not list the delayed events of %s; will try again", user)
                return False
            mine = [r for r in arming if r.delay is not None and r.delay.by == user]
            settled &= await self._settle(user, listed, mine,
                                          [j for j in jobs if j.ref.user_id == user], own_user)
        self.done = settled
        return settled

    async def _settle(self, user: str, listed: list[Listed], arming: list[ArmCandidate],
                      jobs: list[CancelJob], own_user: str | None) -> bool:
        delays = await self._store.delays_of({item.target for item in listed})
        wanted = {j.ref.target for j in jobs}
        planned = {r.event_id: r for r in arming}
        kept: set[str] = set()
        cancel: list[DelayRef] = []
        for item in sorted(listed, key=lambda i: i.fires_at or 0):
            delay = delays.get(item.target)
            if delay is not None and delay.state is DelayState.ARMED \
                    and delay.delay_id == item.delay_id:
                kept.add(item.target)
                continue
            if item.reason != REDACTION_REASON:
                continue  # not one of Lethe's
            if item.target not in kept and delay is not None and (
                    (delay.state is DelayState.ARMING and delay.by == user)
                    or (delay.state is DelayState.NONE and user == own_user)):
                row = planned.get(item.target)
                at = (row.delay.at if row is not None and row.delay is not None
                      and row.delay.at is not None else item.fires_at)
                if at is not None:
                    async with self._store.transaction() as tx:
                        if await tx.adopt(item.target, item.delay_id, user, at,
                                          self._grace_ms):
                            kept.add(item.target)
                            log.info("adopted the delayed redaction of %s in %s",
                                     item.target, item.room_id)
                            continue
            if item.delay_id in self._queued:
                continue
            if user == own_user or item.target in wanted or (
                    delay is not None and delay.by == user):
                cancel.append(DelayRef(item.delay_id, user, item.room_id, item.target))
        async with self._store.transaction() as tx:
            for ref in cancel:
                await tx.queue_cancel(ref)
            for job in jobs:
                await tx.cancel_done(job.job_id)
        now = self._clock.now_ms()
        settled = True
        for row in arming:
            if row.event_id in kept or row.delay is None:
                continue
            if row.delay.at is not None and row.delay.at <= now + ECHO_SLACK_MS:
                # Its time has come: perhaps it fired while Lethe was away.
                seen = await self.fetch(row.room_id, row.event_id, row.sender)
                if seen.outcome is Outcome.REDACTED:
                    await self.finish_fired(row, now)
                    continue
                if seen.outcome in (Outcome.RATE_LIMITED, Outcome.TRANSIENT) or \
                        may_be_firing(row.delay.at, now):
                    settled = False  # look again: the redaction may still come
                    continue
            async with self._store.transaction() as tx:
                await tx.disarm(row.event_id, never=False)
        return settled
