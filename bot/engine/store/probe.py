"""A look at a PostgreSQL store for `lethe doctor`: reachable, the server's version,
the schema's, and how long a round trip takes. Errors name the database by its
masked URL only."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.postgres import PgStore, describe

_ROUND_TRIPS = 5


@dataclass(frozen=True)
class PgProbe:
    server_version: str
    schema_version: int
    round_trip_ms: float  # the median of a few trivial queries


async def probe_postgres(database: Database) -> PgProbe:
    """Raises StoreError (unreachable, refused, no such database, not Lethe's, schema
    out of date or too new)."""
    store = await PgStore.open(database, readonly=True)
    try:
        raw = await store.conn.raw()
        server = str(await raw.fetchval("SHOW server_version"))
        schema = int(await raw.fetchval("SELECT version FROM schema_version"))
        times = []
        for _ in range(_ROUND_TRIPS):
            start = time.perf_counter()
            await raw.fetchval("SELECT 1")
            times.append((time.perf_counter() - start) * 1000)
        return PgProbe(server.split(" ", 1)[0], schema, sorted(times)[len(times) // 2])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise StoreError(f"{database.shown}: {describe(database, exc)}") from None
    finally:
        await store.close()
