"""The sync loop: each ``/sync`` (with its gaps caught up, bot/front/catchup.py) read
into engine updates and stored in one engine transaction with the sync token; only
then is its follow-up work handed to the action worker. A sync that cannot be
stored is not acknowledged: the same token brings it again after a back-off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp
from nio import LocalProtocolError, SyncError, SyncResponse

from bot.engine.engine import SYNC_TOKEN_KEY
from bot.engine.model import IngestResult, PolicyEvent, RoomUpdate
from bot.engine.store import database_unavailable
from bot.front import texts
from bot.front.actions import (
    ActionWorker,
    CheckPower,
    LeaveIfAlone,
    Notice,
    log_given_up,
)
from bot.front.catchup import CatchUp, GapUnread
from bot.front.client import LetheClient
from bot.front.pace import MIN_INTERVAL_S, SyncNews, SyncPace
from bot.front.pinning import PinsChanged
from bot.front.policyactions import PolicyChanged
from bot.front.reader import SyncReading
from bot.front.untracked import UNTRACKED_KEY
from bot.matrix.credentials import LoginFailed

if TYPE_CHECKING:
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
MAX_SYNC_BACKOFF_S = 30.0
# Timeline events per room and sync (Synapse's default is 10; bench_sync_ingest found it
# serves no more than 100). A busy room overflowing it costs a /messages backfill.
TIMELINE_LIMIT = 100
SYNC_FILTER = {"room": {"timeline": {"limit": TIMELINE_LIMIT}}}


class SyncLoop:
    def __init__(self, bot: LetheBot, actions: ActionWorker, catch_up: CatchUp) -> None:
        self._bot = bot
        self._actions = actions
        self._catch_up = catch_up

    async def run(self) -> None:
        bot = self._bot
        assert bot.client is not None and bot.engine is not None
        token = await bot.engine.sync_token()
        first = True
        failures = 0
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        engine = bot.engine
        pace = SyncPace(TIMELINE_LIMIT)
        started = -MIN_INTERVAL_S
        while True:
            await pace.wait_turn(started, engine.backlogged, engine.wait_drained)
            started = loop.time()
            backlogged = engine.backlogged
            database_down = False
            try:
                resp = await bot.client.sync(
                    timeout=self._first_timeout_ms() if first else SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    since=token,
                    full_state=True if first else None,
                )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                resp = None
                problem = type(exc).__name__
            if isinstance(resp, SyncResponse):
                if down_since is not None:
                    log.info("homeserver is back after %.1f s", time.monotonic() - down_since)
                    down_since = None
                try:
                    await self._on_sync(resp, first)
                except GapUnread as exc:
                    # Nothing of this sync is stored: the same token again, after a
                    # back-off, brings the same gap to read.
                    problem = f"a gap could not be read: {exc}; the sync is not stored"
                except Exception as exc:
                    # The database away: nothing of this sync is stored either, so
                    # the same token brings it again once the database is back.
                    if not database_unavailable(exc):
                        raise
                    problem = (f"the database is unavailable ({type(exc).__name__}); "
                               "the sync is not stored")
                    database_down = True
                else:
                    failures = 0
                    pace.observe(SyncNews.of(resp), backlogged=backlogged)
                    token = resp.next_batch
                    first = False
                    await self._after_sync()
                    continue
            elif isinstance(resp, SyncError):
                if resp.status_code in ("M_UNKNOWN_TOKEN", "M_FORBIDDEN"):
                    raise LoginFailed(f"the homeserver rejected the bot's login: {resp.message}")
                problem = f"{resp.status_code}"
            failures += 1
            if down_since is None and not database_down:  # the homeserver answered
                down_since = time.monotonic()
            wait = min(MAX_SYNC_BACKOFF_S, 0.5 * 2 ** min(failures, 8))
            log.warning("sync failed (%s); retrying in %.1f s", problem, wait)
            await asyncio.sleep(wait)

    def _first_timeout_ms(self) -> int:
        # Synapse keeps each /sync answer for 2 minutes (sync_response_cache_duration)
        # keyed on its parameters, timeout included. A rebuild asks with a timeout of
        # its own, so it never gets an initial sync cached before the bot joined the
        # rooms it must rebuild (e.g. its own first start, minutes before).
        return 1 if self._bot.rebuild else 0

    async def _after_sync(self) -> None:
        """The E2EE housekeeping nio's sync_forever would do."""
        client = self._bot.client
        assert client is not None
        try:
            await client.send_to_device_messages()
            if client.should_upload_keys:
                await client.keys_upload()
            if client.should_query_keys:
                await client.keys_query()
            if client.should_claim_keys:
                await client.keys_claim(client.get_users_for_key_claiming())
        except (TimeoutError, aiohttp.ClientError, OSError, LocalProtocolError) as exc:
            log.warning("key maintenance failed (%s); will retry after the next sync",
                        type(exc).__name__)

    async def _on_sync(self, resp: SyncResponse, first: bool) -> None:
        bot = self._bot
        assert bot.engine is not None and bot.client is not None
        known = {row.room_id for row in await bot.engine.rooms()}
        rebuilding = first and bot.rebuild
        backfill = await self._catch_up.backfill(resp, known, rebuilding)
        now = bot.engine.now_ms()
        ephemeral = bot.client.last_ephemeral if isinstance(bot.client, LetheClient) else None
        reading = bot.reader.read(resp, known, now, backfill.events, ephemeral=ephemeral,
                                  run_commands=not rebuilding)
        for room_id in reading.left:
            log.info("left %s; forgetting its schedule", room_id)
            log_given_up(await bot.engine.forget_room(room_id))
            self._actions.forget(room_id)
            if bot.joins.done(room_id):  # the invite was withdrawn: stop retrying
                await self._actions.save_joins()
        meta = {SYNC_TOKEN_KEY: resp.next_batch}
        for room_id, span in backfill.untracked.items():
            meta[UNTRACKED_KEY + room_id] = span.to_json()  # for `!lethe status`
        updates = [self._with_own_writes(update) for update in reading.updates]
        result = await bot.engine.ingest(updates, meta=meta)
        if rebuilding:
            bot.rebuild = False
            # A warning when there was something to rebuild (a lost lethe.db); the first
            # run after `lethe login` finds no room.
            log.log(logging.WARNING if backfill.rebuilt else logging.INFO,
                    "rebuilt the schedule of %d room(s) from their history (%d event(s) "
                    "tracked); %d command(s) seen while rebuilding were not run; not "
                    "recovered: receipts older than each member's latest, the redaction "
                    "counts, and any span logged as not tracked",
                    len(backfill.rebuilt), result.tracked, reading.commands_skipped)
        log.debug("sync persisted: %d joined room(s) updated, %d event(s) tracked",
                  len(reading.updates), result.tracked)
        bot.synced_one(result.tracked)
        self._hand_off(reading, result, first, backfill.rebuilt)

    def _with_own_writes(self, update: RoomUpdate) -> RoomUpdate:
        """The bot's own policy writes with their content, if a moderator redacted them
        before this sync brought them back (a redaction is not an "off")."""
        if not any(isinstance(i, PolicyEvent) and i.redacted_by is not None
                   for i in update.timeline):
            return update
        own = self._bot.own_writes
        timeline = tuple(own.restore(i) if isinstance(i, PolicyEvent) else i
                         for i in update.timeline)
        return replace(update, timeline=timeline)

    def _hand_off(self, reading: SyncReading, result: IngestResult, first: bool,
                  rebuilt: frozenset[str] = frozenset()) -> None:
        put = self._actions.put
        config = self._bot.config
        for invite in reading.invites:
            put(invite)
        for room_id in sorted(reading.power_changed):
            put(CheckPower(room_id, announce=not first))
        for room_id in sorted(reading.pins_changed):
            put(PinsChanged(room_id))
        for change in result.policy_changes:
            own = not change.initial and change.sender == config.bot.user_id
            put(PolicyChanged(
                change.room_id, change.policy, change.sender, change.initial,
                # rebuilt: the room met the bot long ago
                greet=change.initial and change.room_id not in rebuilt,
                event_ids=_own_policy_event_ids(reading, change.room_id, change.sender)
                if own else ()))
            if change.bound is not None and not (change.initial and change.room_id in rebuilt):
                put(Notice(change.room_id, texts.enforced_at_bound(change)))
        for bad in result.invalid_policies:
            put(Notice(bad.room_id, texts.invalid_policy(bad)))
        for command in reading.commands:
            put(command)
        for update in reading.updates:
            if any(getattr(i, "joined", True) is False for i in update.timeline):
                put(LeaveIfAlone(update.room_id))


def _own_policy_event_ids(reading: SyncReading, room_id: str, sender: str) -> tuple[str, ...]:
    return tuple(
        item.event_id
        for update in reading.updates if update.room_id == room_id
        for item in update.timeline
        if isinstance(item, PolicyEvent) and item.sender == sender and item.event_id
    )
