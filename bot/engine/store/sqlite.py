"""The SQLite backend: opening (and migrating) the file, transactions, and reads.

One aiosqlite connection. Writers hold ``transaction()`` (which serialises them);
readers need nothing, and a read inside a transaction sees its writes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from bot.engine.held import HeldEvent
from bot.engine.model import (
    ArmCandidate,
    CancelJob,
    Delay,
    DueMedia,
    Erasure,
    EventStatus,
    MediaCounts,
    MediaState,
    PendingEvent,
    RoomRow,
    RoomSchedule,
)
from bot.engine.store import delayed, erasures, events, held, media, meta, receipts, rooms
from bot.engine.store.errors import StoreError
from bot.engine.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.engine.store.transaction import Transaction

_SQLITE_HEADER = b"SQLite format 3\x00"


class Store:
    def __init__(self, conn: aiosqlite.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._write_lock = asyncio.Lock()
        self._due_rooms = events.DueRooms()

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
            for number in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    await self._conn.execute(statement)
                await self._conn.execute("UPDATE schema_version SET version = ?", (number,))

    async def close(self) -> None:
        await self._conn.close()

    # --- writing -----------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        async with self._write_lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Serialise writers and make each batch atomic: the one way to write."""
        async with self._writing():
            tx = Transaction(self._conn, self._due_rooms)
            try:
                yield tx
            finally:
                tx._end()

    @property
    def conn(self) -> aiosqlite.Connection:
        """The SQLite connection, for tests and tools that inspect the file; the engine
        never uses it."""
        return self._conn

    # --- reads -------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        return await meta.get_meta(self._conn, key)

    async def max_seq(self) -> int:
        stored = await self.get_meta("seq")
        return int(stored) if stored is not None else 0

    async def appservice_txn_done(self, txn_id: str) -> bool:
        return await meta.appservice_txn_done(self._conn, txn_id)

    async def get_room(self, room_id: str) -> RoomRow | None:
        return await rooms.get_room(self._conn, room_id)

    async def list_rooms(self) -> list[RoomRow]:
        return await rooms.list_rooms(self._conn)

    async def members(self, room_id: str) -> set[str]:
        """The room's counted members."""
        return await rooms.members(self._conn, room_id)

    async def room_schedule(self, room_id: str) -> RoomSchedule:
        return await rooms.room_schedule(self._conn, room_id)

    async def room_schedules(self) -> dict[str, RoomSchedule]:
        """Per room with anything pending: how much, and the earliest due time."""
        return await rooms.room_schedules(self._conn)

    async def known_event_ids(
        self, event_ids: Iterable[str], *, room_id: str | None = None
    ) -> set[str]:
        """Which of ``event_ids`` are tracked (in ``room_id`` only, if given: a relation
        resolves within its own room, whatever id it names)."""
        return await events.known_event_ids(self._conn, event_ids, room_id)

    async def event_seq(self, room_id: str, event_id: str) -> int | None:
        """The timeline position of an event Lethe saw in the room, if it still keeps it:
        in ``positions``, or for a tracked event also in ``events`` (rows from before
        migration 4, or older than the per-room cap)."""
        return await receipts.event_seq(self._conn, room_id, event_id)

    async def has_unread(self, room_id: str) -> bool:
        """Whether the room has an event a receipt could still make due."""
        return await receipts.has_unread(self._conn, room_id)

    async def next_due(self) -> int | None:
        return await events.next_due(self._conn)

    async def pending_count(self, room_id: str | None = None) -> int:
        return await events.pending_count(self._conn, room_id)

    async def pending(self, room_id: str | None = None, limit: int = 1000) -> list[PendingEvent]:
        return await events.pending(self._conn, room_id, limit)

    async def count_by_status(self) -> dict[EventStatus | int, int]:
        """Tracked events per status (an int: a status this version does not know)."""
        return await events.count_by_status(self._conn)

    async def media_counts(self, room_id: str | None = None) -> MediaCounts:
        """Files of tracked messages by state, in ``room_id`` or everywhere."""
        return await media.counts(self._conn, room_id)

    async def media_of(self, event_ids: Sequence[str]
                       ) -> list[tuple[str, str, str, MediaState]]:
        """(event_id, server, media_id, state) of the files these events pointed at."""
        return await media.files_of(self._conn, event_ids)

    async def due_media(self, now_ms: int, limit: int) -> list[DueMedia]:
        """Up to ``limit`` files to delete now: due, and held by no tracked message."""
        return await media.due_files(self._conn, now_ms, limit)

    async def next_media_due(self) -> int | None:
        """When the earliest due file that no tracked message holds is to be tried."""
        return await media.next_due(self._conn)

    async def ledger(self, room_id: str, since_ms: int | None = None) -> list[Erasure]:
        """The ledger's entries for the room (confirmed since ``since_ms``), oldest first."""
        return await erasures.in_room(self._conn, room_id, since_ms)

    async def ledger_sample(self, each: int) -> list[Erasure]:
        """The ledger's ``each`` oldest and ``each`` newest entries, oldest first."""
        return await erasures.sample(self._conn, each)

    async def ledger_oldest(self) -> int | None:
        """When the ledger's oldest entry was confirmed (None: the ledger is empty)."""
        return await erasures.oldest(self._conn)

    # --- delayed redactions (bot/engine/delayed.py) ------------------------------

    async def arm_candidates(self, low: int, high: int | None, limit: int) -> list[ArmCandidate]:
        """Events with no delayed redaction due from ``low`` to ``high``, earliest first
        (in rooms where Lethe may redact everybody's messages)."""
        return await delayed.arm_candidates(self._conn, low, high, limit)

    async def stale_delays(self, low: int, limit: int) -> list[ArmCandidate]:
        """Waiting events due from ``low`` whose delayed redaction fires too late now."""
        return await delayed.stale(self._conn, low, limit)

    async def next_unarmed(self, low: int) -> int | None:
        return await delayed.next_unarmed(self._conn, low)

    async def arming(self) -> list[ArmCandidate]:
        """Events whose scheduling request's answer was not stored."""
        return await delayed.arming(self._conn)

    async def delays_of(self, event_ids: Iterable[str]) -> dict[str, Delay]:
        return await delayed.delays_of(self._conn, event_ids)

    async def armed_count(self, by: str | None = None, room_id: str | None = None) -> int:
        """Delayed redactions scheduled (or being scheduled), by account or room."""
        return await delayed.armed_count(self._conn, by, room_id)

    async def latest_armed(self, by: str) -> ArmCandidate | None:
        return await delayed.latest_armed(self._conn, by)

    async def fire_seconds(self, low: int) -> dict[int, int]:
        """Delayed redactions per second (ms // 1000) they fire in, from ``low`` on."""
        return await delayed.fire_seconds(self._conn, low)

    async def due_cancels(self, now_ms: int, limit: int) -> list[CancelJob]:
        return await delayed.due_cancels(self._conn, now_ms, limit)

    async def cancels(self) -> tuple[int, int | None]:
        """Queued cancellations, and when the next may be tried."""
        return await delayed.cancels(self._conn)

    async def held(self, room_id: str | None = None) -> list[HeldEvent]:
        """The held events (pinned policy notices, bot/engine/holds.py), oldest first."""
        return await held.held(self._conn, room_id)


def database_unavailable(exc: BaseException) -> bool:
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
