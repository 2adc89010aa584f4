"""The Lethe bot: a nio client in front of the retention engine.

Tasks it owns (all cancelled on stop): the sync loop, the action worker, the
engine's scheduler with its redaction workers, and the metrics server when
configured. The sync loop persists each sync (events, receipts, members,
policies and the sync token in one transaction) and hands follow-up work to the
action worker through a queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    JoinError,
    LocalProtocolError,
    OlmUnverifiedDeviceError,
    RoomSendResponse,
    SendRetryError,
    SyncError,
    SyncResponse,
)

from bot.config import Config
from bot.engine.engine import SYNC_TOKEN_KEY, Engine, EngineConfig
from bot.engine.givenup import GivenUpRoom
from bot.engine.model import IngestResult, PolicyEvent, RoomUpdate
from bot.engine.policy import Mode, Policy
from bot.engine.power import PowerState, describe_level
from bot.engine.redactor import ECHO_WAIT_MS
from bot.engine.store import Store
from bot.front.client import (
    Credentials,
    LetheClient,
    LoginFailed,
    ensure_own_identity,
    login,
)
from bot.front.commands import CommandError, Help, SetPolicy, Status, parse_command, usage
from bot.front.handlers import CommandRequest, SyncReader, SyncReading, inviter_allowed
from bot.front.joins import META_KEY as JOINS_META
from bot.front.joins import JoinRetries, load_pending
from bot.front.pace import MIN_INTERVAL_S, SyncNews, SyncPace
from bot.front.status import UNTRACKED_KEY, UntrackedSpan, status_text
from bot.front.throttle import ReplyThrottle
from bot.matrix.crosssigning import IdentityError, OwnIdentity
from bot.matrix.files import secure_dir
from bot.matrix.http import CLIENT_V3, HomeserverUnavailable, HttpTransport, MatrixHttp, q
from bot.matrix.policy_state import (
    OWN_WRITES_KEY,
    OwnWrites,
    PolicyWriteFailed,
    missing_policy_power,
    write_policy,
)
from bot.matrix.trust import DeviceTrust
from bot.metrics import LetheMetrics, MetricsServer
from bot.runlock import BOT_LOCK, RunLock, hold

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
MAX_SYNC_BACKOFF_S = 30.0
BACKFILL_PAGES = 20  # up to 2,000 events of a gap per room and sync
BACKFILL_PAGE_SIZE = 100
# Timeline events per room and sync (Synapse's default is 10; bench_sync_ingest found it
# serves no more than 100). A busy room overflowing it costs a /messages backfill.
TIMELINE_LIMIT = 100
SYNC_FILTER = {"room": {"timeline": {"limit": TIMELINE_LIMIT}}}


@dataclass(frozen=True)
class Join:
    room_id: str
    inviter: str | None


@dataclass(frozen=True)
class Notice:
    room_id: str
    text: str


@dataclass(frozen=True)
class CheckPower:
    room_id: str
    announce: bool


@dataclass(frozen=True)
class LeaveIfAlone:
    room_id: str


@dataclass(frozen=True)
class OwnAccountPolicyChange:
    """The policy was changed by state events sent from the bot's own account: by this
    process for a command (already announced), or by `lethe policy set|clear`."""

    room_id: str
    policy: Policy
    event_ids: tuple[str, ...]


Action = Join | Notice | CheckPower | LeaveIfAlone | OwnAccountPolicyChange | CommandRequest


class GapUnread(Exception):
    """A gap could not be read for a reason that may pass (the homeserver down, 5xx,
    429): the sync must not be persisted, or its token would skip the gap for good."""


@dataclass(frozen=True)
class Backfill:
    """What paging back over gaps brought: each room's events (oldest first), the spans
    that could not be read, and the rooms whose schedule was rebuilt from history."""

    events: dict[str, list[Mapping[str, Any]]]
    untracked: dict[str, UntrackedSpan]
    rebuilt: frozenset[str]


class LetheBot:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client: AsyncClient | None = None
        self.creds: Credentials | None = None
        self.engine: Engine | None = None
        self.http: MatrixHttp | None = None
        self.reader = SyncReader(config.bot.user_id, config.command_prefix)
        self._lock: RunLock | None = None
        # lethe.db holds no sync yet but a login was saved: the database was lost (or
        # this is the first run after `lethe login`). The first sync rebuilds the
        # schedule from each joined room's history and runs no command.
        self._rebuild = False
        self._throttle = ReplyThrottle()
        self._actions: asyncio.Queue[Action] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()  # set after each persisted sync (tests wait on it)
        self.sync_count = 0
        self.last_sync_at: float | None = None
        self.tracked_total = 0  # events put on a schedule by this process (metrics)
        self._power_ok: dict[str, bool] = {}
        self._own_writes = OwnWrites()
        self._metrics_server: MetricsServer | None = None
        self.identity: OwnIdentity | None = None
        self.trust: DeviceTrust | None = None
        self.joins = JoinRetries()
        self._join_timers: dict[str, asyncio.Task[None]] = {}  # room -> its next try

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        # Before anything touches the key store or the database: one process per data_dir.
        secure_dir(self.config.data_dir)
        self._lock = hold(self.config.data_dir / BOT_LOCK, "lethe run")
        had_login = self.config.credentials_path.exists()
        self.client, self.creds = await login(self.config)
        self.http = MatrixHttp(self.config.homeserver.url, self.creds.access_token)
        store = await Store.open(self.config.db_path)
        self.engine = Engine(
            store,
            HttpTransport(self.http),
            EngineConfig(
                self.config.bot.user_id,
                self.config.ignore_readers,
                self.config.default_cap_ms,
                self.config.workers,
                echo_wait_ms=ECHO_WAIT_MS,
            ),
            on_park=self._on_park,
        )
        await self.engine.start()
        self._own_writes = OwnWrites(await self.engine.store.get_meta(OWN_WRITES_KEY))
        self._rebuild = had_login and await self.engine.sync_token() is None
        if self._rebuild:
            log.info("lethe.db holds no schedule but a login is saved: rebuilding the "
                     "schedule of every joined room from its history (up to %d events "
                     "per room); commands seen while rebuilding are not run",
                     BACKFILL_PAGES * BACKFILL_PAGE_SIZE)
        if self.config.metrics is not None:
            metrics = LetheMetrics(self)
            self.engine.scheduler.observe_redactions(metrics.observe_redaction)
            self._metrics_server = MetricsServer(self.config.metrics, self, metrics)
            await self._metrics_server.start()
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        await self._cross_sign()
        self.trust = DeviceTrust(self.config.e2ee.trust, self.http,
                                 self.config.pinned_identities_path)
        # What the last run was retrying: the first sync (full state) lists every
        # invite still open, and each is tried again from there.
        self.joins = JoinRetries(load_pending(await self.engine.store.get_meta(JOINS_META)))
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="lethe-sync"),
            asyncio.create_task(self._action_loop(), name="lethe-actions"),
        ]

    async def _cross_sign(self) -> None:
        """Sign this device with the bot's cross-signing identity (made on first start).

        A failure is logged, not fatal: redaction, the promise people depend on, does
        not need it; Element users would miss the bot's notices and commands."""
        assert self.client is not None and self.http is not None and self.creds is not None
        try:
            self.identity = await ensure_own_identity(self.config, self.client, self.http,
                                                      self.creds)
        except (IdentityError, HomeserverUnavailable) as exc:
            log.error("the bot's device is not cross-signed, so Element will not share "
                      "room keys with it: %s", exc)

    async def stop(self) -> None:
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        for timer in self._join_timers.values():
            timer.cancel()
        await asyncio.gather(*self._join_timers.values(), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.engine is not None:
            await self.engine.close()
        if self.http is not None:
            await self.http.close()
        if self.client is not None:
            await self.client.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a task fails for good."""
        try:
            await self.start()
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.stop()

    @property
    def sync_alive(self) -> bool:
        return self.last_sync_at is not None and time.monotonic() - self.last_sync_at < 120

    @property
    def scheduler_alive(self) -> bool:
        return self.engine is not None and self.engine.scheduler.alive

    # --- sync --------------------------------------------------------------

    async def _sync_loop(self) -> None:
        assert self.client is not None and self.engine is not None
        token = await self.engine.sync_token()
        first = True
        failures = 0
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        scheduler = self.engine.scheduler
        pace = SyncPace(TIMELINE_LIMIT)
        started = -MIN_INTERVAL_S
        while True:
            await pace.wait_turn(started, scheduler.backlogged, scheduler.wait_drained)
            started = loop.time()
            backlogged = scheduler.backlogged
            try:
                resp = await self.client.sync(
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
            if down_since is None:
                down_since = time.monotonic()
            wait = min(MAX_SYNC_BACKOFF_S, 0.5 * 2 ** min(failures, 8))
            log.warning("sync failed (%s); retrying in %.1f s", problem, wait)
            await asyncio.sleep(wait)

    def _first_timeout_ms(self) -> int:
        # Synapse keeps each /sync answer for 2 minutes (sync_response_cache_duration)
        # keyed on its parameters, timeout included. A rebuild asks with a timeout of
        # its own, so it never gets an initial sync cached before the bot joined the
        # rooms it must rebuild (e.g. its own first start, minutes before).
        return 1 if self._rebuild else 0

    async def _after_sync(self) -> None:
        """The E2EE housekeeping nio's sync_forever would do."""
        client = self.client
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
        assert self.engine is not None and self.client is not None
        known = {row.room_id for row in await self.engine.store.list_rooms()}
        rebuilding = first and self._rebuild
        backfill = await self._backfill(resp, known, rebuilding)
        now = self.engine.clock.now_ms()
        ephemeral = self.client.last_ephemeral if isinstance(self.client, LetheClient) else None
        reading = self.reader.read(resp, known, now, backfill.events, ephemeral=ephemeral,
                                   run_commands=not rebuilding)
        for room_id in reading.left:
            log.info("left %s; forgetting its schedule", room_id)
            _log_given_up(await self.engine.forget_room(room_id))
            self._power_ok.pop(room_id, None)
            if self.joins.done(room_id):  # the invite was withdrawn: stop retrying
                await self._save_joins()
        meta = {SYNC_TOKEN_KEY: resp.next_batch}
        for room_id, span in backfill.untracked.items():
            meta[UNTRACKED_KEY + room_id] = span.to_json()  # for `!lethe status`
        updates = [self._with_own_writes(update) for update in reading.updates]
        result = await self.engine.ingest(updates, meta=meta)
        if rebuilding:
            self._rebuild = False
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
        self.sync_count += 1
        self.tracked_total += result.tracked
        self.last_sync_at = time.monotonic()
        self.synced.set()
        self.synced = asyncio.Event()
        self._hand_off(reading, result, first, backfill.rebuilt)

    def _with_own_writes(self, update: RoomUpdate) -> RoomUpdate:
        """The bot's own policy writes with their content, if a moderator redacted them
        before this sync brought them back (a redaction is not an "off")."""
        if not any(isinstance(i, PolicyEvent) and i.redacted_by is not None
                   for i in update.timeline):
            return update
        timeline = tuple(self._own_writes.restore(i) if isinstance(i, PolicyEvent) else i
                         for i in update.timeline)
        return replace(update, timeline=timeline)

    def _hand_off(self, reading: SyncReading, result: IngestResult, first: bool,
                  rebuilt: frozenset[str] = frozenset()) -> None:
        put = self._actions.put_nowait
        for invite in reading.invites:
            put(Join(invite.room_id, invite.inviter))
        for room_id in sorted(reading.power_changed):
            put(CheckPower(room_id, announce=not first))
        for change in result.policy_changes:
            if change.initial:
                if change.room_id not in rebuilt:  # rebuilt: the room met the bot long ago
                    put(Notice(change.room_id, self._hello(change.policy.describe())))
            elif change.sender != self.config.bot.user_id:
                put(Notice(change.room_id, f"{change.sender} changed the retention policy: "
                                           f"{change.policy.describe()}"))
            else:
                put(OwnAccountPolicyChange(
                    change.room_id, change.policy, _own_policy_event_ids(reading, change.room_id,
                                                                         change.sender)))
        for bad in result.invalid_policies:
            put(Notice(bad.room_id, f"Ignoring the {bad.event_type} state event from "
                                    f"{bad.sender}: {bad.reason}. The policy is unchanged."))
        for command in reading.commands:
            put(command)
        for update in reading.updates:
            if any(getattr(i, "joined", True) is False for i in update.timeline):
                put(LeaveIfAlone(update.room_id))

    def _hello(self, policy: str) -> str:
        p = self.config.command_prefix
        return (f"Lethe is here to make messages disappear. Policy: {policy}. "
                f"Set one with `{p} after-send 1d` or `{p} after-read 1h`; `{p} help` for more.")

    async def _backfill(self, resp: SyncResponse, known: set[str], rebuilding: bool) -> Backfill:
        """After a gap, page back through /messages to the last event Lethe saw, so
        nothing sent while it was away escapes its timer. When rebuilding a lost
        database, page back in every joined room to the bot's own join instead.

        A page that fails for a reason that may pass raises GapUnread: the sync is then
        not stored and is tried again. A gap longer than BACKFILL_PAGES pages, or one the
        homeserver refuses to show, is tracked as far as it was read and its span is
        reported (log, `!lethe status`); its state still applies (SyncReader)."""
        assert self.engine is not None and self.http is not None
        bot = self.config.bot.user_id
        gaps: dict[str, list[Mapping[str, Any]]] = {}
        untracked: dict[str, UntrackedSpan] = {}
        rebuilt: set[str] = set()
        for room_id, info in resp.rooms.join.items():
            timeline_ids = {getattr(e, "event_id", None) for e in info.timeline.events}
            if room_id in known:
                if not info.timeline.limited:
                    continue
                row = await self.engine.store.get_room(room_id)
                stop_at = row.last_event_id if row else None
                if stop_at is None or stop_at in timeline_ids:
                    continue

                def stop(event: Mapping[str, Any], stop_at: str = stop_at) -> bool:
                    return event.get("event_id") == stop_at
            elif rebuilding:
                rebuilt.add(room_id)
                sources = [getattr(e, "source", None) for e in info.timeline.events]
                if not info.timeline.limited or any(
                        isinstance(src, Mapping) and _joins(src, bot) for src in sources):
                    continue  # the timeline reaches back to the bot's join
                stop_at = None

                def stop(event: Mapping[str, Any]) -> bool:
                    return _joins(event, bot)
            else:
                continue
            events, complete, reason = await self._page_back(
                room_id, info.timeline.prev_batch, stop)
            if not complete:
                oldest = events[-1] if events else _source_of(info.timeline.events)
                span = UntrackedSpan(
                    await self._event_ts(room_id, stop_at) if stop_at else None,
                    _origin_ts(oldest), reason)
                untracked[room_id] = span
                log.warning("gap in %s: %s; read back %d events", room_id, span.describe(),
                            len(events))
            events.reverse()
            gaps[room_id] = events
            log.info("gap in %s: caught up on %d events", room_id, len(events))
        return Backfill(gaps, untracked, frozenset(rebuilt))

    async def _page_back(
        self, room_id: str, token: str | None, stop: Any
    ) -> tuple[list[Mapping[str, Any]], bool, str]:
        """Events from ``token`` back to the first one ``stop`` accepts (excluded),
        newest first; whether that one (or the room's first event) was reached; and if
        not, why (fixed words)."""
        assert self.http is not None
        events: list[Mapping[str, Any]] = []
        for _ in range(BACKFILL_PAGES):
            try:
                page = await self.http.messages(room_id, token, limit=BACKFILL_PAGE_SIZE)
            except HomeserverUnavailable as exc:
                raise GapUnread(f"{room_id}: {exc}") from None
            if page.status == 429 or page.status >= 500:
                raise GapUnread(f"{room_id}: HTTP {page.status}")
            if not page.ok:
                # Refused for good (e.g. history the bot may not see): retrying would
                # hold every room's sync back forever.
                return events, False, f"the homeserver refused the history: {page.status}"
            chunk = page.body.get("chunk")
            if not isinstance(chunk, list):
                raise GapUnread(f"{room_id}: a /messages page without its events")
            for event in chunk:
                if not isinstance(event, Mapping):
                    continue
                if stop(event):
                    return events, True, ""
                events.append(event)
            end = page.body.get("end")
            if not chunk or not isinstance(end, str):
                return events, True, ""  # the start of the room: nothing older to miss
            token = end
        return events, False, f"a gap longer than {BACKFILL_PAGES * BACKFILL_PAGE_SIZE} events"

    async def _event_ts(self, room_id: str, event_id: str) -> int | None:
        """When the last event seen before a gap was sent (for the report), if known."""
        assert self.http is not None
        try:
            reply = await self.http.request(
                "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/event/{q(event_id)}")
        except HomeserverUnavailable:
            return None
        return _origin_ts(reply.body) if reply.ok else None

    # --- actions -----------------------------------------------------------

    async def _action_loop(self) -> None:
        while True:
            action = await self._actions.get()
            try:
                await self._act(action)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("action %s failed", type(action).__name__)

    async def _act(self, action: Action) -> None:
        if isinstance(action, Join):
            await self._join(action)
        elif isinstance(action, Notice):
            await self.notice(action.room_id, action.text)
        elif isinstance(action, CheckPower):
            await self._check_power(action.room_id, action.announce)
        elif isinstance(action, LeaveIfAlone):
            await self._leave_if_alone(action.room_id)
        elif isinstance(action, OwnAccountPolicyChange):
            await self._own_account_policy_change(action)
        else:
            await self._command(action)

    async def _join(self, invite: Join) -> None:
        assert self.client is not None
        if not inviter_allowed(invite.inviter, self.config.invites_allow):
            log.warning("refusing invite to %s from %s (not in invites.allow)",
                        invite.room_id, invite.inviter)
            await self.client.room_leave(invite.room_id)
            return
        try:
            resp = await self.client.join(invite.room_id)
            error = resp.message if isinstance(resp, JoinError) else None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        if error is None:
            log.info("joined %s on the invite of %s", invite.room_id, invite.inviter)
            if self.joins.done(invite.room_id):
                await self._save_joins()
            return
        delay = self.joins.failed(invite.room_id, invite.inviter, str(error),
                                  int(time.time() * 1000))
        await self._save_joins()
        if delay is None:
            log.warning("gave up joining %s on the invite of %s: %s", invite.room_id,
                        invite.inviter, error)
            return
        if invite.room_id in self._join_timers:
            return  # a try is already scheduled (the invite came twice): one chain only
        log.warning("could not join %s (%s); trying again in %.0f s", invite.room_id,
                    error, delay)
        self._join_timers[invite.room_id] = asyncio.create_task(
            self._join_later(invite, delay), name="lethe-join-retry")

    async def _join_later(self, invite: Join, delay: float) -> None:
        await asyncio.sleep(delay)
        self._join_timers.pop(invite.room_id, None)
        self._actions.put_nowait(invite)

    async def _save_joins(self) -> None:
        assert self.engine is not None
        async with self.engine.store.transaction():
            await self.engine.store.set_meta(JOINS_META, self.joins.to_json())

    async def notice(self, room_id: str, text: str) -> str | None:
        """Send an m.notice (encrypted where the room is); returns its event id."""
        assert self.client is not None and self.trust is not None
        try:
            room = self.client.rooms.get(room_id)
            await self.trust.prepare(self.client, room.users if room is not None else ())
            resp = await self.client.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": text},
                ignore_unverified_devices=self.trust.share_with_unverified,
            )
        except HomeserverUnavailable as exc:
            log.warning("not sending a notice to %s: %s", room_id, exc)
            return None
        except OlmUnverifiedDeviceError as exc:
            log.warning("not sending a notice to %s: unverified device %s (e2ee.trust is "
                        "'verified')", room_id, exc.device.id)
            return None
        except (TimeoutError, LocalProtocolError, SendRetryError, aiohttp.ClientError,
                OSError) as exc:
            log.warning("could not send a notice to %s: %s", room_id, type(exc).__name__)
            return None
        if isinstance(resp, RoomSendResponse):
            return resp.event_id
        log.warning("could not send a notice to %s: %s", room_id, getattr(resp, "message", ""))
        return None

    def power(self, room_id: str) -> PowerState:
        return PowerState.from_state(
            self.reader.create_events.get(room_id), self.reader.power_levels.get(room_id)
        )

    async def _check_power(self, room_id: str, announce: bool) -> None:
        assert self.engine is not None
        if room_id not in self.reader.create_events:
            return  # not a room we are in (any more)
        power = self.power(room_id)
        bot = self.config.bot.user_id
        can = power.can_redact_others(bot)
        level = power.level(bot)
        # Compared with what the database says, so a restart does not repeat notices.
        changed = await self.engine.set_power(
            room_id, can, None if level == float("inf") else int(level), power.redact
        )
        self._power_ok[room_id] = can
        if not changed:
            return
        if not can:
            await self.notice(room_id, self._no_power_text(power))
        elif announce:
            await self.notice(room_id, "I can redact messages here again; the policy is "
                                       "enforced, including what came due meanwhile.")

    def _no_power_text(self, power: PowerState) -> str:
        level = describe_level(power.level(self.config.bot.user_id))
        return (f"I cannot redact other people's messages here: my power level is {level} "
                f"and redacting needs {power.redact}. Give me power level {power.redact} "
                "(moderator) so the policy can be enforced; until then expired messages "
                "stay and I keep them scheduled.")

    async def _on_park(self, room_id: str, reason: str) -> None:
        if self._power_ok.get(room_id, True):
            self._power_ok[room_id] = False
            self._actions.put_nowait(Notice(room_id, self._no_power_text(self.power(room_id))))

    async def _leave_if_alone(self, room_id: str) -> None:
        assert self.client is not None and self.engine is not None
        room = self.client.rooms.get(room_id)
        if room is None or room.joined_count > 1:
            return
        log.info("leaving %s: the bot is its last member", room_id)
        await self.client.room_leave(room_id)
        _log_given_up(await self.engine.forget_room(room_id))

    # --- commands ----------------------------------------------------------

    async def _command(self, request: CommandRequest) -> None:
        assert self.engine is not None
        # A flood of commands must not become a flood of notices, each redacted later
        # under the rate limit the members' messages need. Members who may change the
        # policy can flood the room with state anyway: only the others are throttled.
        trusted = missing_policy_power(self.power(request.room_id), request.sender) is None
        if not trusted and not self._throttle.allow(request.room_id, request.sender):
            log.debug("ignoring command %s of %s in %s: too many replies (throttled)",
                      request.event_id, request.sender, request.room_id)
            return
        prefix = self.config.command_prefix
        try:
            command = parse_command(request.body, prefix, self.config.default_cap_ms)
        except CommandError as exc:
            await self.notice(request.room_id, f"{request.sender}: {exc}")
            return
        if isinstance(command, Help):
            await self.notice(request.room_id, usage(prefix))
        elif isinstance(command, Status):
            status = await self.engine.status(request.room_id)
            untracked = UntrackedSpan.from_json(
                await self.engine.store.get_meta(UNTRACKED_KEY + request.room_id))
            await self.notice(request.room_id, status_text(status, self.power(request.room_id),
                                                           self.config.bot.user_id, untracked))
        elif isinstance(command, SetPolicy):
            await self._set_policy(request, command)

    async def _set_policy(self, request: CommandRequest, command: SetPolicy) -> None:
        assert self.http is not None
        room_id, sender = request.room_id, request.sender
        power = self.power(room_id)
        bot = self.config.bot.user_id
        missing = missing_policy_power(power, sender)
        if missing is not None:
            log.info("refused a policy change in %s by %s (no power)", room_id, sender)
            await self.notice(
                room_id,
                f"{sender}: you may not change the retention policy here: that needs "
                f"power level {missing.needed}, you have "
                f"{describe_level(power.level(sender))}. Nothing was changed.",
            )
            return
        missing = missing_policy_power(power, bot)
        if missing is not None:
            await self.notice(
                room_id,
                f"I may not change room settings here (I need power level "
                f"{missing.needed}). Nothing was changed.",
            )
            return
        policy = command.policy
        try:
            # Remembered before the sync that brings them back can be handled.
            written = await write_policy(self.http, room_id, policy)
        except PolicyWriteFailed as exc:
            log.warning("could not write the policy in %s: %s", room_id, exc)
            await self.notice(room_id, "Could not write the policy to the room state; "
                                       "please try again.")
            return
        self._own_writes.add(written, policy)
        assert self.engine is not None
        async with self.engine.store.transaction():
            await self.engine.store.set_meta(OWN_WRITES_KEY, self._own_writes.to_json())
        log.info("policy in %s set to %s by %s", room_id, policy.mode.value, sender)
        text = f"{sender} changed the retention policy: {policy.describe()}"
        if policy.mode is not Mode.OFF and not power.can_redact_others(bot):
            text += " " + self._no_power_text(power)
        await self.notice(room_id, text)

    async def _own_account_policy_change(self, change: OwnAccountPolicyChange) -> None:
        """Announce a change made with the bot's account but not by this process (the
        admin CLI). Runs on the action worker after any command that wrote state, so
        the ids of this process's own writes are known by then."""
        if any(event_id in self._own_writes for event_id in change.event_ids):
            return  # a command of this process: announced when it was made
        log.info("policy in %s set to %s from the bot's account (lethe policy)",
                 change.room_id, change.policy.mode.value)
        await self.notice(change.room_id, "The bot's operator changed the retention policy: "
                                          f"{change.policy.describe()}")


def _joins(event: Mapping[str, Any], user_id: str) -> bool:
    """Whether ``event`` is ``user_id`` joining (not a profile change while joined)."""
    if event.get("type") != "m.room.member" or event.get("state_key") != user_id:
        return False
    content = event.get("content")
    if not isinstance(content, Mapping) or content.get("membership") != "join":
        return False
    unsigned = event.get("unsigned")
    before = unsigned.get("prev_content") if isinstance(unsigned, Mapping) else None
    return not (isinstance(before, Mapping) and before.get("membership") == "join")


def _origin_ts(event: object) -> int | None:
    ts = event.get("origin_server_ts") if isinstance(event, Mapping) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def _source_of(events: list[Any]) -> Mapping[str, Any] | None:
    source = getattr(events[0], "source", None) if events else None
    return source if isinstance(source, Mapping) else None


def _own_policy_event_ids(reading: SyncReading, room_id: str, sender: str) -> tuple[str, ...]:
    return tuple(
        item.event_id
        for update in reading.updates if update.room_id == room_id
        for item in update.timeline
        if isinstance(item, PolicyEvent) and item.sender == sender and item.event_id
    )


def _log_given_up(given_up: GivenUpRoom | None) -> None:
    """Out of a room the bot can redact nothing: what was still scheduled there stays
    (unless a bridge on its senders' server, or a moderator, redacts it). Said loudly,
    and kept for `lethe rooms list`."""
    if given_up is None:
        return
    log.warning("gave up %d scheduled redaction(s) in %s (the bot is no longer in it; the "
                "earliest was due %s): those messages stay unless a bridge on their "
                "senders' server or a moderator redacts them", given_up.given_up,
                given_up.room_id, "-" if given_up.next_due_ms is None
                else time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                   time.gmtime(given_up.next_due_ms / 1000)))
