"""The SQLite backend: opening (and migrating) the file, transactions, and reads.

One aiosqlite connection. Writers hold ``transaction()`` (which serialises them);
readers need nothing, and a read inside a transaction sees its writes.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aiosqlite

from bot.engine.store.base import BaseStore
from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.schema import SCHEMA_VERSION

_SQLITE_HEADER = b"SQLite format 3\x00"


class Store(BaseStore):
    BEGIN = "BEGIN IMMEDIATE"

    def __init__(self, conn: aiosqlite.Connection, path: Path, readonly: bool) -> None:
        super().__init__(conn, Database.sqlite(path), readonly)
        self._sqlite = conn
        self.path = path

    # --- opening -----------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Store:
        path = Path(path)
        existed = path.exists()
        if readonly and not existed:
            raise StoreError(f"{path}: no Lethe database here (has the bot run yet?)")
        if existed:
            _check_header(path)
        if not readonly:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not existed:
                # Create it private before SQLite does: its -wal and -shm files take
                # their mode from the database file.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from None
        store = cls(conn, path, readonly)
        try:
            await store._prepare(existed)
        except BaseException:
            await conn.close()
            raise
        if not existed:
            os.chmod(path, 0o600)
        return store

    async def _prepare(self, existed: bool) -> None:
        try:
            await self._conn.execute("PRAGMA busy_timeout = 5000")
            # Before switching to WAL, which rewrites the file header: a foreign
            # database must be left exactly as it was.
            version = await self._schema_version(existed)
            if not self.readonly:
                await self._conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a committed "redaction due" must survive power loss, not only a crash.
                await self._conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable SQLite database: {exc}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this Lethe "
                f"understands ({SCHEMA_VERSION}); upgrade Lethe"
            )
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise StoreError(f"{self.path}: schema is out of date; run the bot once to migrate")
            await self._migrate(version)

    async def _schema_version(self, existed: bool) -> int:
        async with self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ) as cur:
            tables = {row[0] for row in await cur.fetchall()}
        if "schema_version" not in tables:
            if tables:
                # Never silently build our schema over somebody else's data.
                raise StoreError(
                    f"{self.path}: exists but is not a Lethe database (tables: "
                    f"{', '.join(sorted(tables))}); move it away or fix data_dir"
                )
            return 0
        async with self._conn.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"{self.path}: schema_version table is empty; the file is damaged")
        return int(row[0])

    async def _migrate(self, current: int) -> None:
        async with self._writing():
            if current == 0:
                await self._conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                await self._conn.execute("INSERT INTO schema_version VALUES (0)")
            await self._apply_migrations(current)

    async def close(self) -> None:
        await self._sqlite.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        """The SQLite connection, for tests and tools that inspect the file; the engine
        never uses it."""
        return self._sqlite


def sqlite_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database unavailable (locked, busy, disk full or failing,
    the file damaged): a later try can get past it. Its other errors are about the
    data, and would fail the same way every time."""
    if isinstance(exc, sqlite3.OperationalError):
        return True
    # The bare DatabaseError is a damaged file; its other subclasses are about the data.
    return type(exc) in (sqlite3.DatabaseError, sqlite3.InternalError)


def _check_header(path: Path) -> None:
    """SQLite takes a short non-database file for an empty database and writes over it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database: {exc}") from None
    if head and head != _SQLITE_HEADER:
        raise StoreError(f"{path}: not a SQLite database; move it away or fix data_dir")
