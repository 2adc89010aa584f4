"""The standby's lock: one active Lethe per PostgreSQL database (and schema, and role).

The active process holds a PostgreSQL session advisory lock on the store's own
connection (taken by ``Leader.on_connect``, PgConnection's hook), so the lock and the
right to write are one thing: every write goes through that connection, and when the
connection goes (the process died, the network or the server went), the lock goes
with it and the standby takes it. A process that loses the connection loses its
leadership for good (``LeadershipLost``): its memory (the schedule, the rooms) may be
stale once another process has written, so it stops and a supervisor starts it again,
as a standby. A standby finds the lock held (``NotLeader``) and tries again.

The key is made from the role ("bot", "bridge") and the connection's current schema,
so a bot and a bridge, or two Lethes in two schemas of one database, never block
each other. SQLite needs none of this: one file, one process (bot/runlock.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.postgres import connect, describe

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
    """The lock for one role; ``on_connect`` is the store's hook, ``lost`` is set once
    leadership is gone (``watch`` raises then: the front's owned task)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.held = False
        self.lost = asyncio.Event()
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
        self.held = True
        conn.add_termination_listener(self._dropped)

    def _dropped(self, conn: Any) -> None:
        # Also called on our own close at stop, when nobody watches any more.
        self._lose("the connection to the database was lost, and the lock with it")

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            self._why = f"no longer the active lethe {self.role}: {why}"
            self.lost.set()

    async def watch(self) -> None:
        """Returns never; raises LeadershipLost the moment leadership is gone."""
        await self.lost.wait()
        raise LeadershipLost(self._why)


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
