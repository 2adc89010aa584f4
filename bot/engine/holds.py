"""Holds: events exempt from expiry while the front keeps them on show (the bot's
pinned policy notice, bot/front/pinning.py).

A hold may come before or after the sync that brings its event, and neither order
loses it: an event already tracked is moved off the schedule with its rule (its
delayed redaction, if any, queued for cancelling); one not seen yet is awaited, and
the ingestor, asking ``awaits``, stores its rule with the hold instead of scheduling
it. Releasing puts the event back on the schedule under the rule it was sent under,
counted as read when sent (it was on show); a deadline already past is due at once.
"""

from __future__ import annotations

from bot.engine.clock import Clock
from bot.engine.held import HeldEvent
from bot.engine.model import TrackedEvent
from bot.engine.policy import Mode
from bot.engine.store import StoreBackend


class Holds:
    def __init__(self, store: StoreBackend, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._ids: set[str] = set()  # every held event, as the store has them

    async def load(self) -> None:
        self._ids = {found.event_id for found in await self._store.held()}

    def awaits(self, event_id: str) -> bool:
        """Whether ``event_id`` is held (read by the ingestor inside its transaction)."""
        return event_id in self._ids

    async def hold(self, room_id: str, event_id: str) -> bool:
        """Exempt the event; False if it is on its way out already (claimed for a
        redaction, parked or failed)."""
        async with self._store.transaction() as tx:
            held = await tx.hold(room_id, event_id)
        if held:  # committed; no await since, so no ingest ran in between
            self._ids.add(event_id)
        return held

    async def release(self, room_id: str, event_id: str) -> HeldEvent | None:
        """End the hold: the event expires by its own rule again. What was held, or
        None if nothing was."""
        now = self._clock.now_ms()
        async with self._store.transaction() as tx:
            found = await tx.take_held(room_id, event_id)
            rule = found.rule if found is not None else None
            if (found is not None and rule is not None and rule.active
                    and found.sender is not None and found.seq is not None
                    and found.origin_ts is not None and found.sent_at is not None):
                sent = found.sent_at
                read_at = sent if rule.mode is Mode.AFTER_READ else None
                await tx.insert_events([TrackedEvent(
                    event_id, room_id, found.sender, found.seq, found.origin_ts,
                    found.thread_id, None, rule, read_at,
                    max(now, rule.deadline(sent, read_at)), sent,
                )])
        self._ids.discard(event_id)
        return found

    async def held(self, room_id: str | None = None) -> list[HeldEvent]:
        return await self._store.held(room_id)
