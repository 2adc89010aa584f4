"""The retention engine: the one object a front talks to.

A front (the nio bot or the appservice bridge) calls ``ingest`` with what it
saw, tells it about power changes, and provides a ``Transport`` for redactions.
The engine owns the store, the scheduler and its workers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine.clock import Clock, SystemClock
from bot.engine.givenup import META_KEY as GIVEN_UP_KEY
from bot.engine.givenup import GivenUpRoom, dump_given_up, load_given_up
from bot.engine.ingest import IngestConfig, Ingestor
from bot.engine.model import IngestResult, RoomUpdate
from bot.engine.policy import Policy
from bot.engine.redactor import RedactionStats, Redactor, Transport
from bot.engine.scheduler import Scheduler
from bot.engine.store import FAILED, RoomRow, Store

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"


@dataclass(frozen=True)
class EngineConfig:
    bot_user_id: str
    ignore_readers: tuple[str, ...] = ()
    default_cap_ms: int = 7 * 24 * 3600 * 1000
    workers: int = 8
    default_policy: Policy = field(default_factory=Policy.off)  # rooms without policy state
    # Set by fronts whose event stream brings Lethe's own redactions back (see redactor).
    echo_wait_ms: int | None = None


@dataclass(frozen=True)
class RoomStatus:
    room_id: str
    policy: Policy
    policy_sender: str | None
    can_redact: bool
    bot_level: int | None
    redact_level: int | None
    pending: int
    next_due: int | None
    redacted: int
    failed: int


class Engine:
    def __init__(
        self,
        store: Store,
        transport: Transport,
        config: EngineConfig,
        *,
        clock: Clock | None = None,
        on_park: Callable[[str, str], Awaitable[None]] | None = None,
        needs_power: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock or SystemClock()
        self._redactor = Redactor(
            store, transport, self.clock, config.bot_user_id, needs_power,
            echo_wait_ms=config.echo_wait_ms,
        )
        self._ingestor = Ingestor(
            store,
            IngestConfig(
                config.bot_user_id, config.ignore_readers, config.default_cap_ms,
                config.default_policy,
            ),
            self._redactor.echoes,
        )
        self.scheduler = Scheduler(
            store,
            self._redactor,
            self.clock,
            self._can_redact_others,
            workers=config.workers,
            on_park=on_park,
        )

    @classmethod
    async def open(
        cls, db_path: Path, transport: Transport, config: EngineConfig, **kwargs: object
    ) -> Engine:
        store = await Store.open(db_path)
        return cls(store, transport, config, **kwargs)  # type: ignore[arg-type]

    @property
    def stats(self) -> RedactionStats:
        return self._redactor.stats

    async def start(self) -> None:
        await self._ingestor.load()
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    async def close(self) -> None:
        await self.stop()
        await self.store.close()

    async def ingest(
        self,
        updates: list[RoomUpdate],
        *,
        meta: dict[str, str] | None = None,
        appservice_txn: str | None = None,
    ) -> IngestResult:
        """Store ``updates`` in one transaction, together with ``meta`` and (for the
        bridge) the id of the appservice transaction that carried them."""
        now = self.clock.now_ms()
        result = await self._ingestor.apply(updates, now, meta, appservice_txn)
        for event in result.redacted:
            self.scheduler.record_done(event, now, echoed=True)
        self.scheduler.wake()
        return result

    async def sync_token(self) -> str | None:
        return await self.store.get_meta(SYNC_TOKEN_KEY)

    def counts_as_reader(self, user_id: str) -> bool:
        return self._ingestor.counts_as_reader(user_id)

    async def set_power(
        self, room_id: str, can_redact: bool, bot_level: int | None, redact_level: int | None
    ) -> bool:
        """Record whether the bot may redact others' events; returns whether that changed."""
        before = await self.store.get_room(room_id)
        async with self.store.transaction():
            await self.store.ensure_room(room_id)
            await self.store.set_room_power(room_id, can_redact, bot_level, redact_level)
        self.scheduler.wake()
        # A new room row starts as "can redact", so only a lack of power is news there.
        was = before.can_redact if before is not None else True
        return was != can_redact

    async def forget_room(self, room_id: str) -> GivenUpRoom | None:
        """Drop the room's schedule (the front can no longer redact there). What was
        still scheduled is given up: recorded, in the same transaction, for `lethe rooms
        list`, and returned so the front can log it; None if nothing was."""
        given_up = None
        async with self.store.transaction() as conn:
            async with conn.execute(
                "SELECT count(*), min(due_at) FROM events WHERE room_id = ? AND status != ?",
                (room_id, FAILED),
            ) as cur:
                found = await cur.fetchone()
            if found and found[0]:
                given_up = GivenUpRoom(room_id, self.clock.now_ms(), int(found[0]), found[1])
            await self.store.delete_room(room_id)
            if given_up is not None:
                await self.store.set_meta(GIVEN_UP_KEY, dump_given_up(
                    load_given_up(await self.store.get_meta(GIVEN_UP_KEY)), given_up))
        return given_up

    async def room(self, room_id: str) -> RoomRow | None:
        return await self.store.get_room(room_id)

    async def status(self, room_id: str) -> RoomStatus | None:
        row = await self.store.get_room(room_id)
        if row is None:
            return None
        async with self.store.conn.execute(
            "SELECT count(*), min(due_at) FROM events WHERE room_id = ? AND status != 3",
            (room_id,),
        ) as cur:
            found = await cur.fetchone()
        pending, next_due = (found[0], found[1]) if found else (0, None)
        return RoomStatus(
            row.room_id, row.policy, row.policy_sender, row.can_redact, row.bot_level,
            row.redact_level, pending, next_due, row.redacted_count, row.failed_count,
        )

    async def _can_redact_others(self, room_id: str) -> bool:
        row = await self.store.get_room(room_id)
        return row is not None and row.can_redact
