"""The retention engine: the one object a front (and the metrics) talks to.

A front (the nio bot or the appservice bridge) opens it (``Engine.open``), calls
``ingest`` with what it saw, tells it about power changes, keeps its own small
state through ``get_meta``/``set_meta``, and provides a ``Transport`` for
redactions. The engine owns the store, the scheduler and its workers; a front
needs none of them directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine.arming import Armer
from bot.engine.bounds import BoundsConfig, Enforcement, row_enforcement
from bot.engine.clock import Clock, SystemClock
from bot.engine.delayed import DelayedStatus, DelayedTransport, Takeover, Why
from bot.engine.echoes import EchoConfirmation
from bot.engine.expire import expire
from bot.engine.givenup import META_KEY as GIVEN_UP_KEY
from bot.engine.givenup import GivenUpRoom, dump_given_up, load_given_up
from bot.engine.held import HeldEvent
from bot.engine.holds import Holds
from bot.engine.ids import server_name
from bot.engine.ingest import IngestConfig, Ingestor
from bot.engine.ledger import LedgerKeeper
from bot.engine.media import MediaDeleter, MediaStats, MediaTransport
from bot.engine.model import DueEvent, EventStatus, IngestResult, MediaCounts, RoomRow, RoomUpdate
from bot.engine.msgtimer import Expiry
from bot.engine.policy import Policy
from bot.engine.reclamp import reclamp_rooms
from bot.engine.redactor import RedactionStats, Redactor, Transport
from bot.engine.scheduler import ParkListener, RedactionListener, Scheduler
from bot.engine.store import Database, OnConnect, StoreBackend, open_store

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
    # Delete the files of the messages Lethe expires (media.py): their ids are stored
    # only while this is on, and only with a MediaTransport given to the engine.
    delete_media: bool = False
    # How long the erasure ledger keeps each confirmed redaction, and the ids of deleted
    # files (erasure.ledger): what `lethe audit --erasure` can ask about.
    ledger_ms: int = 30 * 24 * 3600 * 1000
    # Schedule delayed redactions where the homeserver offers them (config
    # ``redaction.delayed``: auto; bot/engine/delayed.py).
    delayed_redactions: bool = True
    bounds: BoundsConfig = field(default_factory=BoundsConfig)  # the operator's (bounds.py)


@dataclass(frozen=True)
class RoomStatus:
    room_id: str
    policy: Policy
    policy_sender: str | None
    can_redact_others: bool
    bot_level: int | None
    redact_level: int | None
    pending: int
    next_due: int | None
    redacted: int
    failed: int
    media: MediaCounts | None = None  # None: media deletion is off
    armed: int = 0  # delayed redactions the homeserver holds here (bot/engine/delayed.py)
    enforcement: Enforcement | None = None  # the state's policy, and the bound if outside


class Engine:
    def __init__(
        self,
        store: StoreBackend,
        transport: Transport,
        config: EngineConfig,
        *,
        clock: Clock | None = None,
        on_park: ParkListener | None = None,
        is_other_sender: Callable[[str], bool] | None = None,
        media: MediaTransport | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self._clock = clock or SystemClock()
        self._echoes = EchoConfirmation(trusted=config.echo_wait_ms is not None)
        self._redactor = Redactor(
            store, transport, self._clock, config.bot_user_id, is_other_sender,
            echo_wait_ms=config.echo_wait_ms, echoes=self._echoes,
        )
        deletes_media = config.delete_media and media is not None
        self._ingestor = Ingestor(
            store,
            IngestConfig(
                config.bot_user_id, config.ignore_readers, config.default_cap_ms,
                config.default_policy, track_media=deletes_media, bounds=config.bounds,
            ),
            self._echoes,
        )
        self._holds = self._ingestor.holds = Holds(store, self._clock)
        self._scheduler = Scheduler(
            store,
            self._redactor,
            self._echoes,
            self._clock,
            self._can_redact_others,
            workers=config.workers,
            on_park=on_park,
        )
        self._media: MediaDeleter | None = None
        if deletes_media:
            assert media is not None
            self._media = MediaDeleter(
                store, media, self._clock, server_name(config.bot_user_id),
                config.ledger_ms, backlogged=lambda: self._scheduler.backlogged,
                wait_drained=self._scheduler.wait_drained,
            )
            self._scheduler.observe_redactions(lambda _event, _lag: self._wake_media())
        self._ledger = LedgerKeeper(store, self._clock, config.ledger_ms)
        self._scheduler.observe_redactions(self._ledger.redacted)
        # Delayed redactions, where the front can schedule them (its Transport also is a
        # DelayedTransport): the Armer schedules and cancels them in the background;
        # armed rows the scheduler claims go through the Takeover first.
        api = transport if isinstance(transport, DelayedTransport) else None
        self._armer: Armer | None = None
        if api is not None:
            scheduler = self._scheduler
            self._armer = Armer(
                store, api, transport, self._clock, self._redactor.stats,
                enabled=config.delayed_redactions,
                backlogged=lambda: scheduler.backlogged,
                wait_drained=scheduler.wait_drained,
                paused_until=lambda: self._redactor.paused_until_ms,
                on_fired=self._fired,
            )
        self._redactor.delays = Takeover(store, api, self._clock, self._redactor.stats,
                                         self._slot_freed)

    @classmethod
    async def open(
        cls,
        database: Database | Path,
        transport: Transport,
        config: EngineConfig,
        *,
        clock: Clock | None = None,
        on_park: ParkListener | None = None,
        is_other_sender: Callable[[str], bool] | None = None,
        media: MediaTransport | None = None,
        on_connect: OnConnect | None = None,
    ) -> Engine:
        """The way a front makes its engine: opens (and migrates) the database. With
        ``media`` and ``config.delete_media``, the files of expired messages are deleted."""
        store = await open_store(database, on_connect=on_connect)
        return cls(store, transport, config, clock=clock, on_park=on_park,
                   is_other_sender=is_other_sender, media=media)

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._ingestor.load()
        await reclamp_rooms(self._store, self.config.bounds, self.config.default_policy)
        await self._holds.load()
        await self._ledger.prune()
        await self._scheduler.start()
        if self._media is not None:
            await self._media.start()
        if self._armer is not None:
            self._armer.start()

    async def stop(self) -> None:
        if self._armer is not None:
            await self._armer.stop()
        if self._media is not None:
            await self._media.stop()
        await self._scheduler.stop()
        await self._ledger.stop()

    async def close(self) -> None:
        await self.stop()
        await self._store.close()

    # --- what the fronts tell the engine ----------------------------------------

    async def ingest(
        self,
        updates: list[RoomUpdate],
        *,
        meta: dict[str, str] | None = None,
        appservice_txn: str | None = None,
    ) -> IngestResult:
        """Store ``updates`` in one transaction, together with ``meta`` and (for the
        bridge) the id of the appservice transaction that carried them."""
        now = self._clock.now_ms()
        result = await self._ingestor.apply(updates, now, meta, appservice_txn)
        for event in result.redacted:
            self._scheduler.record_done(event, now, echoed=True)
        for fired in result.fired:
            self._redactor.stats.delayed_fired += 1
            self._fired(fired.due, fired.at)
            self._slot_freed(fired.due.delay.by if fired.due.delay else None)
        self._scheduler.wake()
        self._wake_media()  # somebody else's redaction makes files due too
        self.wake_delayed()
        return result

    async def set_power(
        self, room_id: str, can_redact_others: bool, bot_level: int | None,
        redact_level: int | None,
    ) -> bool:
        """Record whether the bot may redact others' events; returns whether that changed."""
        before = await self._store.get_room(room_id)
        async with self._store.transaction() as tx:
            await tx.ensure_room(room_id)
            await tx.set_room_power(room_id, can_redact_others, bot_level, redact_level)
        self._scheduler.wake()
        self.wake_delayed()
        # A new room row starts as "can redact", so only a lack of power is news there.
        was = before.can_redact_others if before is not None else True
        return was != can_redact_others

    async def forget_room(self, room_id: str) -> GivenUpRoom | None:
        """Drop the room's schedule (the front can no longer redact there). What was
        still scheduled is given up: recorded, in the same transaction, for `lethe rooms
        list`, and returned so the front can log it; None if nothing was."""
        given_up = None
        async with self._store.transaction() as tx:
            schedule = await self._store.room_schedule(room_id)
            if schedule.pending:
                given_up = GivenUpRoom(room_id, self._clock.now_ms(), schedule.pending,
                                       schedule.next_due)
            await tx.delete_room(room_id)
            if given_up is not None:
                await tx.set_meta(GIVEN_UP_KEY, dump_given_up(
                    load_given_up(await self._store.get_meta(GIVEN_UP_KEY)), given_up))
        # A file its messages there held may now be free to go with another's.
        self._wake_media()
        self.wake_delayed()  # its delayed redactions are queued for cancelling
        return given_up

    async def expire_event(self, room_id: str, event_id: str, due_ms: int, *,
                           untracked: tuple[str, int] | None = None) -> Expiry:
        """A deadline of the event's own, never later than the one it has (expire.py)."""
        result = await expire(self._store, room_id, event_id, due_ms, untracked)
        self._scheduler.wake()
        self.wake_delayed()
        return result
    async def hold(self, room_id: str, event_id: str) -> bool:
        """Exempt the front's own event from expiry, before or after it is ingested
        (bot/engine/holds.py); False if it is being redacted already."""
        held = await self._holds.hold(room_id, event_id)
        self.wake_delayed()  # its delayed redaction, if any, is to be cancelled
        return held

    async def release(self, room_id: str, event_id: str) -> HeldEvent | None:
        """End a hold: the event expires by the rule it was sent under again."""
        found = await self._holds.release(room_id, event_id)
        self._scheduler.wake()
        self.wake_delayed()
        return found

    async def held(self, room_id: str | None = None) -> list[HeldEvent]:
        return await self._holds.held(room_id)

    async def set_meta(self, key: str, value: str) -> None:
        """Keep a front's own small state (a JSON text, say) in the database."""
        async with self._store.transaction() as tx:
            await tx.set_meta(key, value)

    def wake(self) -> None:
        """Something may have become due sooner than the scheduler thinks."""
        self._scheduler.wake()

    def _wake_media(self) -> None:
        if self._media is not None:
            self._media.wake()
    def wake_delayed(self) -> None:
        """There may be delayed redactions to schedule or cancel."""
        if self._armer is not None:
            self._armer.wake()

    def _slot_freed(self, user: str | None) -> None:
        if self._armer is not None:
            self._armer.slot_freed(user)

    def _fired(self, event: DueEvent, at: int) -> None:
        self._scheduler.record_done(event, at, echoed=True, fired=True)

    def observe_redactions(self, listener: RedactionListener) -> None:
        """Tell ``listener`` of each verified redaction and its lag (for metrics)."""
        self._scheduler.observe_redactions(listener)

    # --- what the fronts and the metrics read -----------------------------------

    def now_ms(self) -> int:
        return self._clock.now_ms()

    @property
    def stats(self) -> RedactionStats:
        return self._redactor.stats

    @property
    def scheduler_alive(self) -> bool:
        return self._scheduler.alive

    @property
    def deletes_media(self) -> bool:
        """Whether the files of expired messages are deleted (a token, and not off)."""
        return self._media is not None

    @property
    def media_stats(self) -> MediaStats | None:
        return self._media.stats if self._media is not None else None

    async def media_counts(self, room_id: str | None = None) -> MediaCounts:
        """Files of tracked messages by state, in ``room_id`` or everywhere."""
        return await self._store.media_counts(room_id)

    @property
    def backlogged(self) -> bool:
        """More is due than the redaction workers take at once (see Scheduler)."""
        return self._scheduler.backlogged

    async def wait_drained(self) -> None:
        """Return once there is no backlog (at once if there is none)."""
        await self._scheduler.wait_drained()

    async def get_meta(self, key: str) -> str | None:
        return await self._store.get_meta(key)

    async def sync_token(self) -> str | None:
        return await self._store.get_meta(SYNC_TOKEN_KEY)

    async def appservice_txn_done(self, txn_id: str) -> bool:
        return await self._store.appservice_txn_done(txn_id)

    async def room(self, room_id: str) -> RoomRow | None:
        return await self._store.get_room(room_id)

    async def rooms(self) -> list[RoomRow]:
        return await self._store.list_rooms()

    async def status(self, room_id: str) -> RoomStatus | None:
        row = await self._store.get_room(room_id)
        if row is None:
            return None
        schedule = await self._store.room_schedule(room_id)
        media = await self.media_counts(room_id) if self.deletes_media else None
        return RoomStatus(
            row.room_id, row.policy, row.policy_sender, row.can_redact_others, row.bot_level,
            row.redact_level, schedule.pending, schedule.next_due, row.redacted_count,
            row.failed_count, media, await self._store.armed_count(room_id=room_id),
            row_enforcement(row, self.config.bounds, self.config.default_policy),
        )

    async def delayed_status(self) -> DelayedStatus:
        """Whether delayed redactions are in use, and if not, why; how many are armed."""
        if self._armer is not None:
            return await self._armer.status()
        queued, _ = await self._store.cancels()
        return DelayedStatus(Why.NOT_AVAILABLE, "not available to this front",
                             await self._store.armed_count(), queued, None)

    async def pending_by_status(self) -> dict[EventStatus | int, int]:
        """Tracked events per status (an int: one this version does not know)."""
        return await self._store.count_by_status()

    async def pending_count(self, room_id: str | None = None) -> int:
        return await self._store.pending_count(room_id)

    async def next_due(self) -> int | None:
        return await self._store.next_due()

    async def tracked(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` are on a schedule."""
        return await self._store.known_event_ids(event_ids)

    async def _can_redact_others(self, room_id: str) -> bool:
        row = await self._store.get_room(room_id)
        return row is not None and row.can_redact_others

