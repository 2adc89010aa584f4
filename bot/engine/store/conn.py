"""The connection the store's statement modules talk to: the part of aiosqlite's API
they use, which the PostgreSQL backend's ``pgconn.PgConnection`` also offers (after
translating the SQL, store/pgsql.py). Rows are sequences (index them, unpack them)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    @property
    def description(self) -> Any: ...
    async def fetchone(self) -> Any: ...
    async def fetchall(self) -> Iterable[Any]: ...


class Result(Protocol):
    """What ``execute`` returns: awaited, or entered (``async with``), a Cursor."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...
    async def __aenter__(self) -> Cursor: ...
    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Any = None, /) -> Result: ...
    def executemany(self, sql: str, parameters: Any, /) -> Result: ...
