"""The PostgreSQL backend: the same statements (translated: store/pgsql.py), the same
numbered migrations, the same one-writer-at-a-time transactions as SQLite's, on one
asyncpg connection (store/pgconn.py).

Durability is PostgreSQL's: a COMMIT returns once the WAL is flushed (keep the server's
``synchronous_commit`` on, its default). Several processes may open one database (a
standby, the CLI's read-only commands); only the one holding the leader lock
(store/leader.py) writes.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from bot.engine.store.base import BaseStore
from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.pgconn import OnConnect, PgConnection
from bot.engine.store.schema import SCHEMA_VERSION

CONNECT_TIMEOUT_S = 10
# Migrations take this transaction-scoped advisory lock, so two processes starting
# together on a new database do not both build it ("lethe" in ASCII).
MIGRATE_LOCK = 0x6C65746865


class PgStore(BaseStore):
    GONE = (OSError, asyncpg.InterfaceError, asyncpg.PostgresError)

    def __init__(self, conn: PgConnection, database: Database, readonly: bool) -> None:
        super().__init__(conn, database, readonly)
        self._pg = conn

    # --- opening -----------------------------------------------------------

    @classmethod
    async def open(cls, database: Database, *, readonly: bool = False,
                   on_connect: OnConnect | None = None) -> PgStore:
        conn = PgConnection(lambda: connect(database, readonly=readonly), on_connect)
        store = cls(conn, database, readonly)
        try:
            await conn.raw()
            await store._prepare()
        except StoreError:
            await conn.close()
            raise
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await conn.close()
            raise StoreError(f"{database.shown}: {describe(database, exc)}") from None
        return store

    async def _prepare(self) -> None:
        version = await self._schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.database.shown}: schema version {version} is newer than this "
                f"Lethe understands ({SCHEMA_VERSION}); upgrade Lethe")
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise StoreError(f"{self.database.shown}: schema is out of date; run the "
                                 "bot once to migrate")
            await self._migrate()

    async def _schema_version(self) -> int:
        raw = await self._pg.raw()
        tables = {r[0] for r in await raw.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        if "schema_version" not in tables:
            if tables:
                raise StoreError(
                    f"{self.database.shown}: holds tables but is not a Lethe database "
                    f"({', '.join(sorted(tables)[:8])}); give Lethe a database of its own")
            if self.readonly:
                raise StoreError(f"{self.database.shown}: no Lethe database here (has the "
                                 "bot run yet?)")
            return 0
        found = await raw.fetchval("SELECT version FROM schema_version")
        if found is None:
            raise StoreError(f"{self.database.shown}: schema_version table is empty")
        return int(found)

    async def _migrate(self) -> None:
        async with self._writing():
            await self._conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
            raw = await self._pg.raw()
            exists = await raw.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            if not exists:
                await self._conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
                await self._conn.execute("INSERT INTO schema_version VALUES (0)")
            await self._apply_migrations(
                int(await raw.fetchval("SELECT version FROM schema_version")))

    async def close(self) -> None:
        await self._pg.close()

    @property
    def conn(self) -> PgConnection:
        """The connection, for tests and tools; the engine never uses it."""
        return self._pg


async def connect(database: Database, *, readonly: bool = False) -> asyncpg.Connection:
    # The server's keepalives notice a client whose machine or network went within
    # about 25 s (not the kernel's 2 h default), and so free its session: with it the
    # leader lock, for a standby to take over (store/leader.py).
    settings: dict[str, Any] = {"application_name": "lethe", "tcp_keepalives_idle": "10",
                                "tcp_keepalives_interval": "5",
                                "tcp_keepalives_count": "3"}
    if readonly:
        settings["default_transaction_read_only"] = "on"
    return await asyncpg.connect(dsn=database.url, timeout=CONNECT_TIMEOUT_S,
                                 server_settings=settings)


def describe(database: Database, exc: BaseException) -> str:
    """What went wrong, for a person, without the password."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        text = "the server refused the user name or password"
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        text = "no such database on the server"
    elif isinstance(exc, TimeoutError):
        text = f"no answer from the server within {CONNECT_TIMEOUT_S} s"
    elif isinstance(exc, OSError):
        text = f"cannot reach the server ({exc.strerror or exc})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return database.scrub(text)


def postgres_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL (or the way to it) unavailable, not the data wrong."""
    return isinstance(exc, (
        OSError, TimeoutError, asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError, asyncpg.SerializationError,
        asyncpg.DeadlockDetectedError, asyncpg.QueryCanceledError,
        asyncpg.InsufficientResourcesError, asyncpg.ReadOnlySQLTransactionError,
        asyncpg.LockNotAvailableError,
    ))
