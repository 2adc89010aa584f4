"""The standby's lock: one active Lethe per PostgreSQL database (and schema, and role).

The active process holds a PostgreSQL session advisory lock on the store's own
connection (taken by ``Leader.on_connect``, PgConnection's hook), so the lock and the
right to write are one thing: every write goes through that connection, and when the
connection goes (the process died, the network or the server went), the lock goes
with it and a standby may take it. A standby finds the lock held (``NotLeader``) and
tries again.

An active process whose connection went takes the lock again on its next statement,
and goes on only if nobody led meanwhile: each leadership writes a new epoch into the
store (``begin``), and the reconnecting process must find its own still there. If
another process holds the lock, or held it in between (its memory, the schedule and
the rooms, may be stale then), leadership is lost for good (``LeadershipLost``): the
process stops, writing nothing more, and a supervisor starts it again as a standby.
So a PostgreSQL restart with no standby is waited out, as SQLite's busy database is.

The key is made from the role ("bot", "bridge") and the connection's current schema,
so a bot and a bridge, or two Lethes in two schemas of one database, never block
each other. SQLite needs none of this: one file, one process (bot/runlock.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.interface import StoreBackend
from bot.engine.store.postgres import connect, describe

log = logging.getLogger(__name__)

RECONNECT_S = 1.0  # how often a leader whose connection went tries to make it again

_HOLDER_SQL = """
SELECT a.application_name, host(a.client_addr), a.client_port, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::text::bigint = ($1::bigint >> 32) & 4294967295
  AND l.objid::text::bigint = $1::bigint & 4294967295
"""


class NotLeader(StoreError):
    """Another process holds the lock: this one is the standby (it tries again)."""


class LeadershipLost(StoreError):
    """This process held the lock and lost it: it must stop at once, writing nothing."""


def lock_key(role: str, schema: str) -> int:
    """The advisory lock's key (a signed 64-bit integer, as PostgreSQL takes it)."""
    digest = hashlib.blake2b(f"lethe/{role}/{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _current_key(conn: asyncpg.Connection, role: str) -> int:
    schema = await conn.fetchval("SELECT coalesce(current_schema(), '')")
    return lock_key(role, str(schema))


class Leader:
    """The lock for one role; ``on_connect`` is the store's hook, ``begin`` follows the
    store's opening, ``lost`` is set once leadership is gone (``watch`` raises then: the
    front's owned task)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.held = False
        self.epoch: str | None = None  # this leadership's, once begun
        self.lost = asyncio.Event()
        self._dropped_event = asyncio.Event()
        self._why = ""
        # Who holds it, as `lethe doctor` and `lethe bridge status` show it.
        # (PostgreSQL keeps 63 bytes of it: the host name is cut, never the pid.)
        self.name = f"lethe {role} on {socket.gethostname()[:32]} pid {os.getpid()}"

    async def on_connect(self, conn: asyncpg.Connection) -> None:
        if self.lost.is_set():
            raise LeadershipLost(self._why)
        await conn.execute("SELECT set_config('application_name', $1, false)", self.name)
        key = await _current_key(conn, self.role)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", key):
            if self.held:
                self._lose("another process holds the lock now")
                raise LeadershipLost(self._why)
            raise NotLeader(f"another lethe {self.role} is active on this database")
        if self.held:
            found = await conn.fetchval("SELECT value FROM meta WHERE key = $1",
                                        self._epoch_key)
            if self.epoch is None or found != self.epoch:
                self._lose("another process led while the connection was away")
                raise LeadershipLost(self._why)
            log.info("the database connection is back, and this process still leads")
        self.held = True
        conn.add_termination_listener(self._dropped)

    @property
    def _epoch_key(self) -> str:
        return f"leader.{self.role}.epoch"

    async def begin(self, store: StoreBackend) -> None:
        """Right after the store opened with the lock: this leadership's epoch, which a
        reconnecting ``on_connect`` must find unchanged."""
        epoch = str(int(await store.get_meta(self._epoch_key) or 0) + 1)
        async with store.transaction() as tx:
            await tx.set_meta(self._epoch_key, epoch)
        self.epoch = epoch

    def _dropped(self, conn: Any) -> None:
        # The lock went with the connection; the next statement reconnects and takes
        # it again, if nobody led in between (on_connect). Also called at our own close.
        if not self.lost.is_set():
            log.warning("the database connection (and the %s lock with it) is lost; "
                        "taking it again when the database answers", self.role)
            self._dropped_event.set()

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self._why = f"no longer the active lethe {self.role}: {why}"
            self.lost.set()

    async def watch(self, reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        """Returns never; raises LeadershipLost the moment leadership is gone. With
        ``reconnect`` (the store's), a lost connection is made again at once rather than
        at the next statement, so that a process whose lock another took stops now, and
        its /health stops saying it is active."""
        while True:
            dropped = asyncio.ensure_future(self._dropped_event.wait())
            lost = asyncio.ensure_future(self.lost.wait())
            try:
                await asyncio.wait([dropped, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                dropped.cancel()
                lost.cancel()
            if self.lost.is_set():
                raise LeadershipLost(self._why)
            self._dropped_event.clear()
            while reconnect is not None and not self.lost.is_set():
                try:
                    await reconnect()
                    break
                except LeadershipLost:
                    break
                except Exception as exc:  # the database away: try again shortly
                    log.debug("the database does not answer yet: %s", type(exc).__name__)
                    await asyncio.sleep(RECONNECT_S)


@dataclass(frozen=True)
class LockHolder:
    application_name: str
    client: str  # address:port, or "local socket"
    since: datetime  # when its connection (the one holding the lock) began


async def lock_holder(database: Database, role: str) -> LockHolder | None:
    """Who holds the ``role``'s lock on ``database`` (None: nobody, no process is
    active). Raises StoreError when the database cannot be asked."""
    try:
        conn = await connect(database, readonly=True)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise StoreError(f"{database.shown}: {describe(database, exc)}") from None
    try:
        row = await conn.fetchrow(_HOLDER_SQL, await _current_key(conn, role))
    finally:
        await conn.close()
    if row is None:
        return None
    address = f"{row[1]}:{row[2]}" if row[1] else "local socket"
    return LockHolder(row[0] or "?", address, row[3])
