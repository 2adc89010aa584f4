"""The database unavailable for a while (SQLite's file locked or its disk full; on
PostgreSQL an error a live connection gets past, such as a serialization failure): the
loops that write keep what they hold, say so once, and try again after a back-off,
rather than dying. Nothing is acknowledged meanwhile: the sync token and the
redactions' outcomes are written only once the database is back. (PostgreSQL's
connection lost ends the run instead: the standby's lock went with it, leader.py.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.engine.store import database_unavailable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class DatabaseOutage:
    """One writer's view of the database being away: ``failed`` for each error (the
    back-off to wait, or None when the error is not the database being away), ``ok``
    after each write that went through."""

    def __init__(self, who: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._who = who
        self._monotonic = monotonic
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float | None:
        if not database_unavailable(exc):
            return None
        self._failures += 1
        wait = min(MAX_BACKOFF_S, 0.25 * float(2 ** min(self._failures, 8)))
        # The error's type only: a driver's message may name the server, never the
        # password, but a type is all a person needs here.
        if self._since is None:
            self._since = self._monotonic()
            log.warning("the database is unavailable (%s); the %s waits for it, retrying "
                        "in %.1f s", type(exc).__name__, self._who, wait)
        else:
            log.debug("the database is still unavailable (%s); the %s retries in %.1f s",
                      type(exc).__name__, self._who, wait)
        return wait

    def ok(self) -> None:
        if self._since is not None:
            log.info("the database is back after %.1f s; the %s goes on",
                     self._monotonic() - self._since, self._who)
            self._since = None
        self._failures = 0
