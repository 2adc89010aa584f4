"""The bridge: an appservice in front of the retention engine.

The homeserver pushes every event and read receipt of each room with a local member.
Each transaction is stored (events, receipts, members, policies and the transaction
id) in one engine transaction and only then answered 200, so a re-sent transaction
is recognised and a crash loses nothing (bridge/transaction.py). Redactions act as
the local sender (``?user_id=``); remote senders' events need the bridge's own bot
user with the permission to redact others' messages (bridge/transport.py,
bridge/followup.py).

Tasks it owns (all cancelled on stop, bot/lifecycle.py): the HTTP listener, the
start-up ping retry, people's defaults for new rooms (bridge/defaults.py), and the
engine's scheduler with its redaction workers (and its
media deletion, with an admin token).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from bot.engine.engine import Engine, EngineConfig
from bot.engine.redactor import ECHO_WAIT_MS
from bot.lifecycle import FrontLife
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.transport import AdminMediaTransport
from bridge.config import BridgeConfig, is_loopback, run_lock_path
from bridge.defaults import BridgeDefaults
from bridge.expire import expire_commands
from bridge.features import publish_features
from bridge.firstsight import StateFetcher
from bridge.followup import FollowUp
from bridge.intake import PushedTransaction, TryLater, shown
from bridge.mirror import MIRRORS_META, BridgeMirror
from bridge.registration import Registration, check_matches, load_registration
from bridge.rooms import OWNERS_META, RoomReader, RoomReading, RoomView, load_room_map
from bridge.server import AppserviceServer
from bridge.transaction import BridgeStats, RoomBatch, by_room, ingest
from bridge.transport import BridgeTransport

log = logging.getLogger(__name__)

MAX_PING_BACKOFF_S = 60.0

__all__ = ["Bridge", "BridgeStats", "CannotListen", "RegistrationNotLoaded"]


class RegistrationNotLoaded(RuntimeError):
    """The homeserver does not know this bridge's as_token."""


class CannotListen(RuntimeError):
    """The appservice API's address is taken or not available."""


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.registration: Registration | None = None
        self.engine: Engine | None = None
        self.http: MatrixHttp | None = None
        # Synapse's admin API with the admin token, when media of expired messages go.
        self.media: AdminMediaTransport | None = None
        self.stats = BridgeStats()
        self.rooms: dict[str, RoomView] = {}
        self.pinged = asyncio.Event()  # the homeserver answered a ping (tests wait on it)
        self.life = FrontLife()
        self._reader = RoomReader(config)
        self._server: AppserviceServer | None = None
        self._lock = asyncio.Lock()  # one transaction at a time, in the order they come
        self._state: StateFetcher | None = None
        self._follow: FollowUp | None = None
        self._mirror: BridgeMirror | None = None
        self._defaults: BridgeDefaults | None = None  # people's defaults for new rooms

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        # Before anything touches the database: one bridge per database (see bot/runlock.py;
        # next to the database, so a bot and a bridge may share a data_dir).
        self.life.hold(run_lock_path(config), "lethe bridge run")
        self.registration = registration = load_registration(config.registration_path)
        check_matches(registration, config)
        if not is_loopback(config.host):
            log.warning("listening on %s, not a loopback address: only the homeserver should "
                        "reach the appservice API", config.host)
        self.http = http = MatrixHttp(config.homeserver_url, registration.as_token)
        # Pushed events are in clear, so their files are seen; in encrypted rooms the
        # bridge holds no keys and sees none (the bot does).
        self.media = AdminMediaTransport.from_config(config.homeserver_url, config.erasure)
        self.engine = engine = await self.life.open_engine(
            config.database,
            BridgeTransport(http, config.is_local, own_user=config.user_id),
            EngineConfig(
                config.user_id,
                config.ignore_readers + config.defer_to,  # bots do not read
                config.default_cap_ms,
                config.workers,
                config.default_policy,
                echo_wait_ms=ECHO_WAIT_MS,
                delete_media=self.media is not None,
                ledger_ms=config.erasure.ledger_ms,
                delayed_redactions=config.delayed_redactions,
                bounds=config.bounds,
            ),
            self._on_park,
            is_other_sender=lambda sender: not config.is_local(sender),
            media=self.media,
        )
        owners = load_room_map(await engine.get_meta(OWNERS_META))
        self._state = StateFetcher(http, config, self.stats)
        self._follow = FollowUp(config, engine, http, self._reader, self.stats, owners)
        self._mirror = BridgeMirror(config, engine, http, self._reader,
                                    load_room_map(await engine.get_meta(MIRRORS_META)))
        self._defaults = BridgeDefaults(config, http)
        self.life.own(self._defaults.run(), name="lethe-bridge-defaults")
        await self.life.start_metrics(config.metrics, self)
        self._server = AppserviceServer(registration.hs_token, self.on_transaction)
        try:
            await self._server.start(config.host, config.port)
        except OSError as exc:
            raise CannotListen(f"cannot listen on {config.host}:{config.port} "
                               f"(bridge.listen): {exc.strerror or exc}") from None
        log.info("appservice API on %s:%d; homeserver %s", config.host, config.port,
                 config.homeserver_url)
        # Last: a successful ping also makes the homeserver re-send what it queued.
        if not await self._ping():
            self.life.own(self._ping_until_answered(), name="lethe-bridge-ping")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
        await self.life.stop()
        self.engine = None
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.media is not None:
            await self.media.close()
            self.media = None
        self.life.release()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a task fails for good."""
        await self.life.run_until(self.start, self.stop, stop)

    # --- what the metrics read ---------------------------------------------------

    @property
    def tracked_total(self) -> int:
        return self.stats.tracked

    @property
    def sync_alive(self) -> bool:
        """The bridge's counterpart of a live sync: the homeserver reaches it (a ping
        came back) and its API is up. An idle homeserver pushes nothing, so the time
        since the last transaction says nothing."""
        return self.pinged.is_set() and self._server is not None

    @property
    def scheduler_alive(self) -> bool:
        return self.engine is not None and self.engine.scheduler_alive

    # --- ping ----------------------------------------------------------------

    async def _ping(self) -> bool:
        """Ask the homeserver to ping us back. Raises RegistrationNotLoaded when it does
        not know the bridge; False when it could not be asked or could not reach us."""
        assert self.http is not None and self.registration is not None
        try:
            reply = await self.http.ping_appservice(self.registration.id,
                                                    f"lethe.ping.{secrets.token_hex(6)}")
        except HomeserverUnavailable as exc:
            log.warning("homeserver %s unreachable (%s); will ping again",
                        self.config.homeserver_url, exc)
            return False
        if reply.ok:
            log.info("the homeserver reaches the bridge (ping %s ms)",
                     reply.body.get("duration_ms"))
            self.pinged.set()
            return True
        if reply.status in (401, 403):
            raise RegistrationNotLoaded(
                f"the homeserver at {self.config.homeserver_url} does not accept this "
                f"bridge's registration ({reply.errcode or reply.status}): add "
                f"{self.config.registration_path} to app_service_config_files in "
                "homeserver.yaml and restart the homeserver")
        detail = reply.body.get("error") or reply.errcode or f"HTTP {reply.status}"
        log.error("the homeserver cannot reach the bridge at the url in %s (%s); check that "
                  "it points at %s:%d", self.config.registration_path, detail,
                  self.config.host, self.config.port)
        return False

    async def _ping_until_answered(self) -> None:
        wait = 1.0
        while True:
            await asyncio.sleep(wait)
            if await self._ping():
                return
            wait = min(MAX_PING_BACKOFF_S, wait * 2)

    # --- transactions --------------------------------------------------------

    async def on_transaction(self, txn: PushedTransaction) -> None:
        """Store one pushed transaction; returns only once it is committed. Malformed
        events and receipts are left out, each on its own; what raises is a failure a
        later delivery may get past (intake.is_transient), or a bug."""
        self.stats.received += 1
        async with self._lock:
            if self.engine is None:
                raise TryLater("the bridge is stopping")
            txn_id = txn.txn_id
            self.stats.largest_transaction = max(self.stats.largest_transaction, txn.size)
            if await self.engine.appservice_txn_done(txn_id):
                self.stats.duplicates += 1
                log.info("transaction %s was already processed; acknowledged again",
                         shown(txn_id))
                return
            batches = by_room(txn, self.stats)
            readings: dict[str, RoomReading] = {}
            try:
                for room_id, batch in batches.items():
                    readings[room_id] = await self._read_room(room_id, batch)
                updates = [r.update for r in readings.values() if r.update is not None]
                result = await ingest(self.engine, txn_id, updates, self.stats)
            except BaseException:
                # Not stored: the homeserver sends it again, and these rooms must then be
                # read from scratch, as if never seen.
                for room_id in batches:
                    self.rooms.pop(room_id, None)
                raise
            self.stats.transactions += 1
            self.stats.events += sum(len(b.events) for b in batches.values())
            self.stats.tracked += result.tracked
            log.debug("transaction %s stored (%d bytes): %d room(s), %d event(s) tracked",
                      shown(txn_id), txn.size, len(updates), result.tracked)
            for change in result.policy_changes:
                if change.initial and not change.policy.active:
                    continue  # every room the bridge meets; only enforcement is news
                log.info("policy in %s: %s%s%s", change.room_id, change.policy.describe(),
                         f" (set by {change.sender})" if change.sender else "",
                         f"; enforced at the bound: {change.bound}" if change.bound else "")
            assert self._follow is not None and self._mirror is not None
            assert self.http is not None
            assert self._defaults is not None
            for room_id, batch in batches.items():
                try:  # stored already: a failure here must not make the homeserver resend
                    self._defaults.observe(self.rooms[room_id].bot_joined, batch.events)
                except Exception:
                    log.exception("people's defaults in %s failed", room_id)
            for room_id, reading in readings.items():
                try:
                    await self._follow.follow_up(self.rooms[room_id], reading)
                except Exception:
                    # Stored already: a failure here must not make the homeserver resend.
                    log.exception("follow-up work for %s failed", room_id)
            for room_id, batch in batches.items():
                try:  # stored already, as above
                    await expire_commands(self.engine, self.http, self.config, self._reader,
                                          self.rooms[room_id], batch.events)
                except Exception:
                    log.exception("expire commands in %s failed", room_id)
            for change in result.policy_changes:
                try:
                    await self._mirror.policy_changed(self.rooms[change.room_id], change)
                except Exception:
                    log.exception("mirroring the policy of %s failed", change.room_id)
                try:
                    await publish_features(self.config, self.engine, self.http, self._reader,
                                           self.rooms[change.room_id], change)
                except Exception:
                    log.exception("publishing the timers of %s failed", change.room_id)

    async def _read_room(self, room_id: str, batch: RoomBatch) -> RoomReading:
        view = self.rooms.get(room_id)
        if view is None:
            view = self.rooms[room_id] = RoomView(room_id)
        initial = []
        first_sight = not view.loaded
        if first_sight:
            if any(e.get("type") == "m.room.create" for e in batch.events):
                state: list[Mapping[str, Any]] | None = []  # it is all in the push
            else:
                assert self._state is not None
                state = await self._state.fetch(view, batch)
            assert self.engine is not None
            initial = self._reader.load(view, state or [], batch.events,
                                        complete=state is not None,
                                        known=await self.engine.room(room_id) is not None)
        return self._reader.read(view, initial, batch.events, batch.receipts,
                                 first_sight=first_sight)

    async def _on_park(self, room_id: str, reason: str) -> None:
        """The engine found the bridge may not redact a remote sender's message."""
        if room_id not in self.stats.cannot_redact_others:
            self.stats.cannot_redact_others.add(room_id)
            log.warning("%s: cannot redact a remote sender's message (%s); the room is "
                        "listed as not enforceable until the bridge's bot %s has power there",
                        room_id, reason, self.config.user_id)
