"""Durable state: the only place with SQL.

What is stored is only what retention needs: event ids, senders, timeline order,
thread and relation ids, timestamps and due times, and (with media deletion on)
the ids of the files messages point at. Never message content. Rows
of verified redactions are deleted; rooms keep counters only.

- ``interface``: what the engine needs of a store (``StoreBackend``, ``TransactionOps``).
- ``database``: where the store lives (a SQLite file or a PostgreSQL URL);
  ``opening.open_store`` opens either.
- ``sqlite``: the SQLite backend (``Store``); ``postgres``: the PostgreSQL one
  (``PgStore``, on ``pgconn``, with the SQL translated by ``pgsql``); ``base``: the
  reads they share; ``transaction``: the ``Transaction`` both yield, the only way to
  write.
- ``schema``: numbered migrations; ``sql``: SQL text built from the engine's enums.
- ``copy``: moving a SQLite store into an empty PostgreSQL one (`lethe db migrate`);
  ``probe``: a PostgreSQL store's versions and round trip (`lethe doctor`).
- ``events``, ``rooms``, ``receipts``, ``meta``, ``media``, ``erasures``: the statements, by table.
"""

from __future__ import annotations

from bot.engine.store.copy import (
    CopyMismatch,
    CopyReport,
    TableCopy,
    TargetNotEmpty,
    copy_into,
    lethe_rows,
    migrate,
)
from bot.engine.store.database import Backend, Database, DatabaseUrlError
from bot.engine.store.errors import StoreError
from bot.engine.store.interface import StoreBackend, TransactionOps
from bot.engine.store.opening import database_unavailable, open_store
from bot.engine.store.pgconn import OnConnect
from bot.engine.store.postgres import PgStore
from bot.engine.store.probe import PgProbe, probe_postgres
from bot.engine.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.engine.store.sqlite import Store
from bot.engine.store.transaction import Transaction

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Backend",
    "CopyMismatch",
    "CopyReport",
    "Database",
    "DatabaseUrlError",
    "OnConnect",
    "PgProbe",
    "PgStore",
    "Store",
    "StoreBackend",
    "StoreError",
    "TableCopy",
    "TargetNotEmpty",
    "Transaction",
    "TransactionOps",
    "copy_into",
    "database_unavailable",
    "lethe_rows",
    "migrate",
    "open_store",
    "probe_postgres",
]
