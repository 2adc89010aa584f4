"""Deleting the files of expired messages: one background task the Engine owns.

A message's files become due in the transaction that records the message gone
(store/media.py), so a crash forgets nothing: on start, whatever is due is tried.
The task deletes one file at a time through ``MediaTransport`` (the fronts give it
Synapse's admin API with an admin's token), and only while redactions are not
backlogged: a due redaction always goes first.

- Deleted, or already gone: settled DELETED (kept for audits until the ledger ends).
- Another server's file: settled REMOTE at once; only that server can delete it.
- 429: every deletion waits ``retry_after``. Network errors and 5xx: back off.
- 401/403 (the token is not an admin's, or revoked) or no admin API at all: logged
  once, clearly; the rows stay due and deletion is tried again every
  ``REFUSED_RETRY_MS``.
- Any other refusal of one file: that file is retried later, up to hourly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from bot.engine.clock import Clock
from bot.engine.model import DueMedia, MediaCounts, MediaState
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)

BATCH = 50  # files claimed per pass
MAX_BACKOFF_MS = 60_000  # network errors and 5xx
MAX_REJECTED_BACKOFF_MS = 3_600_000  # one file the homeserver keeps refusing
REFUSED_RETRY_MS = 600_000  # the token is refused: try again this often
PRUNE_EVERY_MS = 3_600_000
ERROR_RETRY_MS = 60_000  # after an unexpected error (the database busy, say)
IDLE_RECHECK_MS = 3_600_000


# What status outputs say when media deletion is off.
MEDIA_KEPT = ("uploaded files (images, attachments) stay on the homeserver after their "
              "message is redacted; to have them deleted, give Lethe a homeserver admin's "
              "access token (LETHE_ADMIN_TOKEN or erasure.admin_token_file; erasure.media "
              "on)")


def describe_media(counts: MediaCounts | None) -> str:
    """The files of tracked messages, for status outputs (None: deletion is off)."""
    if counts is None:
        return MEDIA_KEPT
    text = (f"{counts.deleted} deleted, {counts.due} waiting to be deleted, "
            f"{counts.held} kept until their message expires")
    if counts.remote:
        text += (f", {counts.remote} on other servers (only those servers can delete "
                 "them)")
    return text


class MediaOutcome(Enum):
    DELETED = "deleted"  # deleted now, or it was gone already
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"  # network error, timeout, 5xx
    REFUSED = "refused"  # 401/403: the token is not (or no longer) an admin's; no admin API
    REJECTED = "rejected"  # any other refusal, of this one file


@dataclass(frozen=True)
class MediaReply:
    outcome: MediaOutcome
    retry_after_ms: int | None = None
    detail: str = ""  # fixed words and status codes: never a token


class MediaTransport(Protocol):
    async def delete_media(self, server: str, media_id: str) -> MediaReply: ...


@dataclass
class MediaStats:
    """In-memory counters, read by status, logs and metrics."""

    deleted: int = 0
    remote: int = 0  # files of expired messages on other servers: not deletable here
    retries: int = 0
    refused: bool = False  # the homeserver refuses the token right now


def _backoff(attempts: int, cap_ms: int) -> int:
    return int(min(cap_ms, 1000 * 2 ** max(0, attempts - 1)))


class MediaDeleter:
    def __init__(
        self,
        store: StoreBackend,
        transport: MediaTransport,
        clock: Clock,
        home_server: str,
        ledger_ms: int,
        *,
        backlogged: Callable[[], bool],
        wait_drained: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._transport = transport
        self._clock = clock
        self._home = home_server
        self._ledger_ms = ledger_ms
        self._backlogged = backlogged
        self._wait_drained = wait_drained
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused_until_ms = 0
        self._transient = 0  # network errors and 5xx in a row
        self._pruned_at: int | None = None
        self.stats = MediaStats()

    def wake(self) -> None:
        """Files may have become due (a message redacted, a room left)."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lethe-media")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._backlogged():
                await self._wait_drained()
                continue
            now = self._clock.now_ms()
            if self._paused_until_ms > now:
                # Not woken early: new due files do not end a 429 or a refusal.
                await self._clock.sleep_until(self._paused_until_ms, asyncio.Event())
                continue
            try:
                await self._pass(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database busy, or a bug: the due rows wait, unharmed
                log.exception("deleting media failed; trying again in %d s",
                              ERROR_RETRY_MS // 1000)
                self._paused_until_ms = self._clock.now_ms() + ERROR_RETRY_MS

    async def _pass(self, now: int) -> None:
        """Delete what is due now, or sleep until something may be."""
        await self._prune(now)
        batch = await self._store.due_media(now, BATCH)
        if not batch:
            next_due = await self._store.next_media_due()
            deadline = min(next_due if next_due is not None else now + IDLE_RECHECK_MS,
                           now + PRUNE_EVERY_MS)
            await self._clock.sleep_until(deadline, self._wake)
            return
        for file in batch:
            if self._backlogged() or not await self._delete(file):
                return

    async def _delete(self, file: DueMedia) -> bool:
        """Delete one file; False when the rest of the batch must wait (a pause)."""
        if file.server != self._home:
            await self._settle(file, MediaState.REMOTE)
            self.stats.remote += 1
            log.info("file %s/%s of an expired message is on another server; only that "
                     "server can delete it", file.server, file.media_id)
            return True
        reply = await self._transport.delete_media(file.server, file.media_id)
        now = self._clock.now_ms()
        outcome = reply.outcome
        if outcome is MediaOutcome.DELETED:
            self._transient = 0
            if self.stats.refused:
                self.stats.refused = False
                log.info("the homeserver accepts the admin token again; deleting media")
            await self._settle(file, MediaState.DELETED)
            self.stats.deleted += 1
            log.info("deleted file %s/%s of an expired message", file.server, file.media_id)
            return True
        self.stats.retries += 1
        if outcome is MediaOutcome.REJECTED:
            wait = _backoff(file.attempts + 1, MAX_REJECTED_BACKOFF_MS)
            log.warning("the homeserver refused to delete file %s/%s (%s); trying again in "
                        "%d s", file.server, file.media_id, reply.detail, wait // 1000)
            await self._retry(file, now + wait)
            return True
        if outcome is MediaOutcome.RATE_LIMITED:
            wait = max(reply.retry_after_ms or 1000, 100)
        elif outcome is MediaOutcome.REFUSED:
            wait = REFUSED_RETRY_MS
            if not self.stats.refused:
                self.stats.refused = True
                log.error("the homeserver refuses to delete media with the admin token "
                          "(%s): it must be a homeserver admin's access token (check "
                          "erasure.admin_token_file or LETHE_ADMIN_TOKEN), and "
                          "/_synapse/admin must reach Synapse. Media of expired messages "
                          "are kept and deleted once it is accepted; trying again every "
                          "%d min", reply.detail, REFUSED_RETRY_MS // 60_000)
        else:
            self._transient += 1
            wait = _backoff(self._transient, MAX_BACKOFF_MS)
            log.info("deleting media: %s; trying again in %.1f s", reply.detail, wait / 1000)
        self._paused_until_ms = now + wait
        return False

    async def _settle(self, file: DueMedia, state: MediaState) -> None:
        async with self._store.transaction() as tx:
            await tx.settle_media(file.server, file.media_id, state, self._clock.now_ms())

    async def _retry(self, file: DueMedia, retry_at: int) -> None:
        async with self._store.transaction() as tx:
            await tx.retry_media(file.server, file.media_id, retry_at)

    async def _prune(self, now: int) -> None:
        """Forget the ids of files settled longer ago than the ledger, hourly."""
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_MS:
            return
        self._pruned_at = now
        async with self._store.transaction() as tx:
            gone = await tx.prune_media(now - self._ledger_ms)
        if gone:
            log.info("forgot the ids of %d deleted file(s) older than the ledger", gone)
