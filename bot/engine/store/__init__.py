"""Durable state: the only place with SQL.

What is stored is only what retention needs: event ids, senders, timeline order,
thread and relation ids, timestamps and due times, and (with media deletion on)
the ids of the files messages point at. Never message content. Rows
of verified redactions are deleted; rooms keep counters only.

- ``interface``: what the engine needs of a store (``StoreBackend``, ``TransactionOps``).
- ``sqlite``: the SQLite backend (``Store``); ``transaction``: its ``Transaction``, the
  only way to write.
- ``schema``: numbered migrations; ``sql``: SQL text built from the engine's enums.
- ``events``, ``rooms``, ``receipts``, ``meta``, ``media``, ``erasures``: the statements, by table.
"""

from __future__ import annotations

from bot.engine.store.errors import StoreError
from bot.engine.store.interface import StoreBackend, TransactionOps
from bot.engine.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.engine.store.sqlite import Store, database_unavailable
from bot.engine.store.transaction import Transaction

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Store",
    "StoreBackend",
    "StoreError",
    "Transaction",
    "TransactionOps",
    "database_unavailable",
]
