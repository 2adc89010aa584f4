"""The erasure ledger's upkeep: its entries (ids and times of Lethe's confirmed
redactions, see store/erasures.py) are forgotten ``keep_ms`` after they were made.

Pruned when the engine starts, and then with the writes that make the ledger grow:
a confirmed redaction prunes if the last prune is ``PRUNE_EVERY_MS`` old, in a
short task of its own. No timer: an idle engine is never woken for it, and while it
redacts nothing, nothing new can expire that a restart or the next redaction
would not find.
"""

from __future__ import annotations

import asyncio
import logging

from bot.engine.clock import Clock
from bot.engine.model import DueEvent
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)

PRUNE_EVERY_MS = 3_600_000


class LedgerKeeper:
    def __init__(self, store: StoreBackend, clock: Clock, keep_ms: int) -> None:
        self._store = store
        self._clock = clock
        self._keep_ms = keep_ms
        self._pruned_at: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """Forget the entries older than ``keep_ms``; returns how many went."""
        now = self._clock.now_ms()
        self._pruned_at = now
        async with self._store.transaction() as tx:
            gone = await tx.prune_ledger(now - self._keep_ms)
        if gone:
            log.info("forgot %d erasure ledger entr%s older than the ledger period",
                     gone, "y" if gone == 1 else "ies")
        return gone

    def redacted(self, event: DueEvent, lag_ms: int) -> None:
        """A redaction was confirmed (a scheduler listener): prune now and then."""
        now = self._clock.now_ms()
        if self._task is not None and not self._task.done():
            return
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_MS:
            return
        self._pruned_at = now
        self._task = asyncio.create_task(self._prune_quietly(), name="lethe-ledger")

    async def _prune_quietly(self) -> None:
        try:
            await self.prune()
        except Exception as exc:  # the database may be busy: the next redaction tries again
            self._pruned_at = None
            log.warning("pruning the erasure ledger failed (%s); trying again later",
                        type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
