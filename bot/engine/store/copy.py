"""Moving a SQLite store into an empty PostgreSQL one (`lethe db migrate`), checked.

Both sides are at the same schema version (the source opened read-only, which refuses
an out-of-date or newer file; the target made by ``PgStore.open``, which runs the
migrations). Every table is copied in one PostgreSQL transaction, then counted and
checksummed on both sides inside it: a difference rolls the whole copy back and
leaves the target as empty as it was. The source is only read.

Identity columns keep their values (COPY writes them as ``INSERT … OVERRIDING SYSTEM
VALUE`` would: held.rowid, SQLite's insertion order, is GENERATED ALWAYS), and their
sequences are then set past the largest copied value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.pgsql import ROWID_TABLES
from bot.engine.store.postgres import MIGRATE_LOCK, PgStore, describe
from bot.engine.store.sqlite import Store

_BATCH = 5000
_MOD = 1 << 256
# Bookkeeping of the schema itself: both sides have it at the same version already.
_NOT_DATA = frozenset({"schema_version"})


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    checksum: str  # the same on both sides, or the copy was rolled back


@dataclass(frozen=True)
class CopyReport:
    tables: tuple[TableCopy, ...]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


class TargetNotEmpty(StoreError):
    """The PostgreSQL database already holds Lethe data: nothing was copied."""


class CopyMismatch(StoreError):
    """The copy's counts or checksums differ from the source's: rolled back."""


def _row_digest(row: Sequence[Any]) -> int:
    # Canonical per value, so SQLite's and PostgreSQL's rows of the same data hash the
    # same (both give int, str, float, bytes or None).
    canon = [None if v is None else [type(v).__name__, v.hex() if isinstance(v, bytes) else v]
             for v in row]
    return int.from_bytes(hashlib.sha256(json.dumps(canon).encode()).digest(), "big")


class _Checksum:
    """A multiset hash (sum of row digests): the same whatever order the rows come in,
    as the two databases sort text differently."""

    def __init__(self) -> None:
        self.rows = 0
        self._sum = 0

    def add(self, row: Sequence[Any]) -> None:
        self.rows += 1
        self._sum = (self._sum + _row_digest(row)) % _MOD

    @property
    def hex(self) -> str:
        return f"{self._sum:064x}"


async def sqlite_tables(source: Store) -> list[str]:
    async with source.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'") as cur:
        return sorted(r[0] for r in await cur.fetchall() if r[0] not in _NOT_DATA)


async def _sqlite_columns(source: Store, table: str) -> list[str]:
    async with source.conn.execute(f"PRAGMA table_info({table})") as cur:
        names = [r[1] for r in await cur.fetchall()]
    return (["rowid"] if table in ROWID_TABLES else []) + names


async def _sqlite_rows(source: Store, table: str, columns: Sequence[str]
                       ) -> AsyncIterator[list[tuple[Any, ...]]]:
    async with source.conn.execute(
            f"SELECT {', '.join(columns)} FROM {table}") as cur:
        while batch := await cur.fetchmany(_BATCH):
            yield [tuple(r) for r in batch]


async def _pg_tables(raw: asyncpg.Connection) -> list[str]:
    found = await raw.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return sorted(r[0] for r in found if r[0] not in _NOT_DATA)


async def _pg_columns(raw: asyncpg.Connection, table: str) -> list[str]:
    found = await raw.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1", table)
    return [r[0] for r in found]


async def _pg_checksum(raw: asyncpg.Connection, table: str,
                       columns: Sequence[str]) -> _Checksum:
    total = _Checksum()
    async for record in raw.cursor(f"SELECT {', '.join(columns)} FROM {table}",
                                   prefetch=_BATCH):
        total.add(tuple(record))
    return total


async def lethe_rows(target: PgStore) -> dict[str, int]:
    """Rows per table of Lethe's in the target (schema_version aside)."""
    raw = await target.conn.raw()
    return {t: int(await raw.fetchval(f"SELECT count(*) FROM {t}"))
            for t in await _pg_tables(raw)}


async def migrate(source: Database, target: Database) -> CopyReport:
    """Open the SQLite ``source`` read-only and the PostgreSQL ``target`` (made and
    migrated if new), and copy; see ``copy_into``."""
    if not source.is_sqlite or target.is_sqlite:
        raise StoreError("a migration goes from a SQLite file to a PostgreSQL database")
    assert source.path is not None
    if source.absent:
        raise StoreError(f"{source.shown}: no such file: nothing to migrate")
    from_store = await Store.open(source.path, readonly=True)
    try:
        to_store = await PgStore.open(target)
        try:
            return await copy_into(from_store, to_store)
        finally:
            await to_store.close()
    finally:
        await from_store.close()


async def copy_into(source: Store, target: PgStore) -> CopyReport:
    """Copy every table of ``source`` into the empty ``target``, verified; raises
    TargetNotEmpty, CopyMismatch or StoreError (the password never in it)."""
    try:
        return await _copy(source, target)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        shown = target.database.shown
        raise StoreError(f"{shown}: the copy failed, nothing was written: "
                         f"{describe(target.database, exc)}") from None


async def _copy(source: Store, target: PgStore) -> CopyReport:
    raw = await target.conn.raw()
    tables = await sqlite_tables(source)
    # PostgreSQL may have tables of its own (bookkeeping SQLite does not need); every
    # table of the source's must be there.
    missing = sorted(set(tables) - set(await _pg_tables(raw)))
    if missing:
        raise StoreError(f"{target.database.shown}: has no table {', '.join(missing)} "
                         "of the source's; is it the same Lethe version?")
    copied: list[TableCopy] = []
    async with raw.transaction():
        # Migrations and this copy exclude each other; a process that started on the
        # target meanwhile shows in the emptiness check.
        await raw.execute(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})")
        await raw.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
        held = {t: n for t, n in (await lethe_rows(target)).items() if n and t in tables}
        if held:
            raise TargetNotEmpty(
                f"{target.database.shown} already holds Lethe data ("
                + ", ".join(f"{t}: {n} row(s)" for t, n in sorted(held.items()))
                + "); migrate only into an empty database")
        for table in tables:
            copied.append(await _copy_table(source, raw, table, target.database.shown))
        await _advance_identities(raw)
    return CopyReport(tuple(copied))


async def _copy_table(source: Store, raw: asyncpg.Connection, table: str,
                      shown: str) -> TableCopy:
    columns = await _sqlite_columns(source, table)
    if sorted(columns) != sorted(await _pg_columns(raw, table)):
        raise StoreError(f"{shown}: the columns of {table} differ from the source's")
    before = _Checksum()
    async for batch in _sqlite_rows(source, table, columns):
        for row in batch:
            before.add(row)
        await raw.copy_records_to_table(table, records=batch, columns=columns)
    after = await _pg_checksum(raw, table, columns)
    if (after.rows, after.hex) != (before.rows, before.hex):
        raise CopyMismatch(
            f"{shown}: {table} differs after the copy ({before.rows} row(s) in the "
            f"source, {after.rows} copied, checksums {before.hex[:16]} and "
            f"{after.hex[:16]}); rolled back, nothing was written")
    return TableCopy(table, before.rows, before.hex)


async def _advance_identities(raw: asyncpg.Connection) -> None:
    """Each identity column's sequence past the largest value copied into it."""
    found = await raw.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'")
    for table, column in found:
        await raw.execute(
            f"SELECT setval(pg_get_serial_sequence($1, $2), "
            f"coalesce(max({column}), 0) + 1, false) FROM {table}", table, column)
