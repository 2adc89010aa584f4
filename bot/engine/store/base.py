"""What every backend shares: transactions, applying the migrations, and the reads,
each a statement module's function on the backend's connection (store/conn.py), so
SQLite and PostgreSQL answer alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

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
from bot.engine.store.conn import Connection
from bot.engine.store.database import Database
from bot.engine.store.errors import StoreError
from bot.engine.store.schema import MIGRATIONS, SCHEMA_VERSION
from bot.engine.store.transaction import Transaction


class BaseStore:
    # What opens a write transaction; what a failed ROLLBACK may raise when the
    # connection itself went (and the transaction with it).
    BEGIN = "BEGIN"
    GONE: tuple[type[BaseException], ...] = ()

    def __init__(self, conn: Connection, database: Database, readonly: bool) -> None:
        self._conn = conn
        self.database = database
        self.readonly = readonly
        self._write_lock = asyncio.Lock()
        self._due_rooms = events.DueRooms()

    # --- writing -----------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        if self.readonly:
            raise StoreError(f"{self.database.shown}: opened read-only")
        async with self._write_lock:
            await self._conn.execute(self.BEGIN)
            try:
                yield
            except BaseException:
                with contextlib.suppress(*self.GONE):
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

    async def _apply_migrations(self, current: int) -> None:
        """Inside ``_writing``: the migrations after ``current``, each recorded."""
        for number in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                await self._conn.execute(statement)
            await self._conn.execute("UPDATE schema_version SET version = ?", (number,))


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
