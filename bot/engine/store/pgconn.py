"""One asyncpg connection behind the store's ``Connection`` API (store/conn.py).

Each statement text is translated once (store/pgsql.py) and prepared once per
connection; its arguments are fitted to the types PostgreSQL inferred for them (SQLite
takes a bool for an integer column, or an int for a condition; PostgreSQL does not).
Statements run one at a time, as on SQLite's single connection: a read made by another
task while a transaction is open sees that transaction's writes.

A connection that broke (the server restarted, the network went) is replaced on the
next statement; what was open on it is gone, so an open transaction fails, and is
retried whole by its owner. ``on_connect`` runs on every new connection before it is
used (the standby's lock: store/leader.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from bot.engine.store.errors import StoreError
from bot.engine.store.pgsql import translate

Connector = Callable[[], Awaitable[asyncpg.Connection]]
OnConnect = Callable[[asyncpg.Connection], Awaitable[None]]

# PostgreSQL's own statements that cannot be prepared with parameters (DDL, transaction
# control) run as they are.
_PREPARED_MAX = 512
_SIMPLE = ("CREATE", "ALTER", "DROP", "BEGIN", "COMMIT", "ROLLBACK", "LOCK", "SET")


# Each argument is cast to the type of its Python value, as SQLite types a value by
# what it is: PostgreSQL would otherwise infer one from the first place it meets the
# parameter (text, in "CASE WHEN x THEN ? END"), and refuse it in the next.
_PG_TYPES: dict[type, str] = {bool: "bigint", int: "bigint", str: "text",
                              float: "double precision", bytes: "bytea"}
_NUMBERED = re.compile(r"\$(\d+)\b")


def _signature(rows: Sequence[Sequence[Any]]) -> tuple[str | None, ...]:
    """Per position, the PostgreSQL type of the first value that is not None."""
    width = len(rows[0]) if rows else 0
    found: list[str | None] = [None] * width
    for row in rows:
        for i, value in enumerate(row):
            if found[i] is None and value is not None:
                found[i] = _PG_TYPES.get(type(value))
        if all(found):
            break
    return tuple(found)


def _typed(sql: str, signature: tuple[str | None, ...]) -> str:
    def cast(found: re.Match[str]) -> str:
        position = int(found.group(1)) - 1
        kind = signature[position] if position < len(signature) else None
        return f"{found.group(0)}::{kind}" if kind else found.group(0)

    return _NUMBERED.sub(cast, sql)


def _int_bools(row: Sequence[Any]) -> list[Any]:
    return [int(v) if isinstance(v, bool) else v for v in row]


class PgCursor:
    def __init__(self, rows: Sequence[Any], rowcount: int, columns: Sequence[str]) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = [(name,) for name in columns]

    async def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> Iterable[Any]:
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        return rows


class PgResult:
    def __init__(self, run: Awaitable[PgCursor]) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, PgCursor]:
        return self._run.__await__()

    async def __aenter__(self) -> PgCursor:
        return await self._run

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None


class _Prepared:
    def __init__(self, statement: asyncpg.prepared_stmt.PreparedStatement) -> None:
        self.statement = statement
        self.columns = [a.name for a in statement.get_attributes()]


def _values(parameters: Any, names: tuple[str, ...] | None) -> list[Any]:
    if parameters is None:
        return []
    if isinstance(parameters, Mapping):
        return _int_bools([parameters[name] for name in names or ()])
    return _int_bools(parameters)


class PgConnection:
    def __init__(self, connect: Connector, on_connect: OnConnect | None = None) -> None:
        self._connect = connect
        self.on_connect = on_connect
        self._conn: asyncpg.Connection | None = None
        self._prepared: dict[tuple[str, tuple[str | None, ...]], _Prepared] = {}
        self._lock = asyncio.Lock()
        self._closed = False  # for good: no statement makes it again
        self._tx_conn: asyncpg.Connection | None = None  # an open transaction's

    async def raw(self) -> asyncpg.Connection:
        """The live connection (made if there is none): for the store's own use."""
        if self._closed:
            raise StoreError("the database connection was closed")
        if self._conn is None or self._conn.is_closed():
            if self._tx_conn is not None:
                # The transaction went with its connection: its remaining statements
                # must fail (the owner rolls back and retries it whole), never run one
                # by one, committed each, on a new connection.
                raise asyncpg.ConnectionDoesNotExistError(
                    "the connection to the database was lost in the middle of a transaction")
            self._prepared.clear()
            self._conn = None
            conn = await self._connect()
            try:
                if self.on_connect is not None:
                    await self.on_connect(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def reconnect(self) -> None:
        """Make the connection again now if it went (its hook runs), not at the next
        statement."""
        async with self._lock:
            await self.raw()

    def execute(self, sql: str, parameters: Any = None, /) -> PgResult:
        return PgResult(self._execute(sql, parameters))

    def executemany(self, sql: str, parameters: Any, /) -> PgResult:
        return PgResult(self._executemany(sql, list(parameters)))

    async def execute_fetchall(self, sql: str, parameters: Any = None, /) -> Iterable[Any]:
        return await (await self._execute(sql, parameters)).fetchall()

    async def _statement(self, conn: asyncpg.Connection, sql: str,
                         signature: tuple[str | None, ...]) -> _Prepared:
        key = (sql, signature)
        found = self._prepared.get(key)
        if found is None:
            statement = await conn.prepare(_typed(translate(sql).sql, signature))
            if len(self._prepared) >= _PREPARED_MAX:  # texts made per call (IN lists)
                del self._prepared[next(iter(self._prepared))]
            found = self._prepared[key] = _Prepared(statement)
        return found

    async def _execute(self, sql: str, parameters: Any) -> PgCursor:
        async with self._lock:
            if not parameters and sql.lstrip()[:8].upper().startswith(_SIMPLE):
                return await self._simple(sql)
            conn = await self.raw()
            try:
                values = _values(parameters, translate(sql).names)
                prepared = await self._statement(conn, sql, _signature([values]))
                rows = await prepared.statement.fetch(*values)
                return PgCursor(rows, _count(prepared.statement.get_statusmsg()),
                                prepared.columns)
            except BaseException:
                await self._drop_if_broken()
                raise

    async def _simple(self, sql: str) -> PgCursor:
        """A statement without parameters (DDL, transaction control), as it is. Which
        connection a transaction began on is kept: see ``raw``."""
        word = sql.split(None, 1)[0].upper()
        ends = word in ("COMMIT", "ROLLBACK")
        if word == "ROLLBACK" and self._tx_conn is not None and self._tx_conn.is_closed():
            self._tx_conn = None  # it went with its connection: nothing to roll back
            return PgCursor([], -1, [])
        try:
            conn = await self.raw()
            status = await conn.execute(translate(sql).sql)
        except BaseException:
            await self._drop_if_broken()
            raise
        finally:
            if ends:
                self._tx_conn = None
        if word == "BEGIN":
            self._tx_conn = conn
        return PgCursor([], _count(status), [])

    async def _executemany(self, sql: str, rows: list[Any]) -> PgCursor:
        if not rows:
            return PgCursor([], 0, [])
        async with self._lock:
            conn = await self.raw()
            try:
                names = translate(sql).names
                batch = [_values(row, names) for row in rows]
                prepared = await self._statement(conn, sql, _signature(batch))
                await prepared.statement.executemany(batch)
                return PgCursor([], -1, [])
            except BaseException:
                await self._drop_if_broken()
                raise

    async def _drop_if_broken(self) -> None:
        conn = self._conn
        if conn is not None and conn.is_closed():
            self._conn = None
            self._prepared.clear()

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        TimeoutError):
                    conn.terminate()


def _count(status: str | None) -> int:
    """Rows affected, from a command tag ("UPDATE 3", "INSERT 0 5")."""
    if not status:
        return -1
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1
