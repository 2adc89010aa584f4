"""Opening the store the config names, whichever backend keeps it."""

from __future__ import annotations

from pathlib import Path

from bot.engine.store.database import Database
from bot.engine.store.interface import StoreBackend
from bot.engine.store.pgconn import OnConnect
from bot.engine.store.postgres import PgStore, postgres_unavailable
from bot.engine.store.sqlite import Store, sqlite_unavailable


async def open_store(database: Database | Path, *, readonly: bool = False,
                     on_connect: OnConnect | None = None) -> StoreBackend:
    """Open (and, unless ``readonly``, migrate) the store. ``on_connect`` (PostgreSQL
    only) runs on each new connection before it is used: the leader lock's check."""
    if isinstance(database, Path):
        database = Database.sqlite(database)
    if database.is_sqlite:
        assert database.path is not None
        return await Store.open(database.path, readonly=readonly)
    return await PgStore.open(database, readonly=readonly, on_connect=on_connect)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database unavailable (locked, busy, unreachable, disk full
    or failing): a later try can get past it. Its other errors are about the data, and
    would fail the same way every time."""
    return sqlite_unavailable(exc) or postgres_unavailable(exc)
