"""The bridge: an appservice in front of the retention engine.

The homeserver pushes every event and read receipt of each room with a local member.
Each transaction is stored (events, receipts, members, policies and the transaction
id) in one engine transaction and only then answered 200, so a re-sent transaction
is recognised and a crash loses nothing. Redactions act as the local sender
(``?user_id=``); remote senders' events need the bridge's own bot user with power.

Tasks it owns (all cancelled on stop): the HTTP listener, the start-up ping retry,
and the engine's scheduler with its redaction workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.engine.engine import Engine, EngineConfig
from bot.engine.model import IngestResult, Receipt, RoomUpdate
from bot.engine.power import describe_level
from bot.engine.redactor import ECHO_WAIT_MS, Outcome, Reply
from bot.engine.store import Store
from bot.matrix.events import clean_receipts
from bot.matrix.http import HomeserverUnavailable, HttpTransport, MatrixHttp, q
from bot.metrics import LetheMetrics, MetricsServer
from bridge.config import BridgeConfig, is_loopback
from bridge.intake import (
    PushedTransaction,
    Skipped,
    TryLater,
    clean_event,
    is_id,
    is_transient,
    shown,
    where,
)
from bridge.registration import Registration, check_matches, load_registration
from bridge.rooms import OWNERS_META, RoomReader, RoomReading, RoomView, load_owners
from bridge.server import AppserviceServer

log = logging.getLogger(__name__)

CLIENT_V1 = "/_matrix/client/v1"
CLIENT_V3 = "/_matrix/client/v3"
EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")
MAX_PING_BACKOFF_S = 60.0
STATE_READERS = 5  # local members tried when reading a newly seen room's state


class RegistrationNotLoaded(RuntimeError):
    """The homeserver does not know this bridge's as_token."""


class CannotListen(RuntimeError):
    """The appservice API's address is taken or not available."""


@dataclass
class BridgeStats:
    """In-memory counters, read by tests, logs and metrics."""

    received: int = 0  # transactions the homeserver delivered, stored or not
    transactions: int = 0
    duplicates: int = 0
    events: int = 0
    tracked: int = 0  # events put on a retention schedule
    skipped: int = 0  # malformed events and receipts left out of their transactions
    largest_transaction: int = 0  # bytes
    unenforceable_rooms: set[str] = field(default_factory=set)


@dataclass
class _RoomBatch:
    events: list[Mapping[str, Any]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.registration: Registration | None = None
        self.engine: Engine | None = None
        self.http: MatrixHttp | None = None
        self.stats = BridgeStats()
        self.rooms: dict[str, RoomView] = {}
        self.pinged = asyncio.Event()  # the homeserver answered a ping (tests wait on it)
        self._reader = RoomReader(config)
        self._server: AppserviceServer | None = None
        self._metrics_server: MetricsServer | None = None
        self._lock = asyncio.Lock()  # one transaction at a time, in the order they come
        self._ping_task: asyncio.Task[None] | None = None
        self._owners: dict[str, str] = {}  # room -> the Lethe bot that enforces it

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self.registration = registration = load_registration(config.registration_path)
        check_matches(registration, config)
        if not is_loopback(config.host):
            log.warning("listening on %s, not a loopback address: only the homeserver should "
                        "reach the appservice API", config.host)
        self.http = MatrixHttp(config.homeserver_url, registration.as_token)
        store = await Store.open(config.db_path)
        self.engine = Engine(
            store,
            BridgeTransport(self.http, config.is_local),
            EngineConfig(
                config.user_id,
                config.ignore_readers + config.defer_to,  # bots do not read
                config.default_cap_ms,
                config.workers,
                config.default_policy,
                echo_wait_ms=ECHO_WAIT_MS,
            ),
            on_park=self._on_park,
            needs_power=lambda sender: not config.is_local(sender),
        )
        await self.engine.start()
        self._owners = load_owners(await store.get_meta(OWNERS_META))
        if config.metrics is not None:
            metrics = LetheMetrics(self)
            self.engine.scheduler.observe_redactions(metrics.observe_redaction)
            self._metrics_server = MetricsServer(config.metrics, self, metrics)
            await self._metrics_server.start()
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
            self._ping_task = asyncio.create_task(self._ping_until_answered(),
                                                  name="lethe-bridge-ping")

    async def stop(self) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
            await asyncio.gather(self._ping_task, return_exceptions=True)
            self._ping_task = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        if self.engine is not None:
            await self.engine.close()
            self.engine = None
        if self.http is not None:
            await self.http.close()
            self.http = None

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a task fails for good."""
        try:
            await self.start()
            waiters = [asyncio.create_task(stop.wait())]
            if self._ping_task is not None:
                waiters.append(self._ping_task)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            waiters[0].cancel()
            for task in done:
                if task is not waiters[0] and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.stop()

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
        return self.engine is not None and self.engine.scheduler.alive

    # --- ping ----------------------------------------------------------------

    async def _ping(self) -> bool:
        """Ask the homeserver to ping us back. Raises RegistrationNotLoaded when it does
        not know the bridge; False when it could not be asked or could not reach us."""
        assert self.http is not None and self.registration is not None
        path = f"{CLIENT_V1}/appservice/{q(self.registration.id)}/ping"
        try:
            reply = await self.http.request(
                "POST", path, json={"transaction_id": f"lethe.ping.{secrets.token_hex(6)}"})
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
            if await self.engine.store.appservice_txn_done(txn_id):
                self.stats.duplicates += 1
                log.info("transaction %s was already processed; acknowledged again",
                         shown(txn_id))
                return
            batches = self._by_room(txn)
            readings: dict[str, RoomReading] = {}
            try:
                for room_id, batch in batches.items():
                    readings[room_id] = await self._read_room(room_id, batch)
                updates = [r.update for r in readings.values() if r.update is not None]
                result = await self._ingest(txn_id, updates)
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
                log.info("policy in %s: %s%s", change.room_id, change.policy.describe(),
                         f" (set by {change.sender})" if change.sender else "")
            for room_id, reading in readings.items():
                try:
                    await self._follow_up(self.rooms[room_id], reading)
                except Exception:
                    # Stored already: a failure here must not make the homeserver resend.
                    log.exception("follow-up work for %s failed", room_id)

    async def _ingest(self, txn_id: str, updates: list[RoomUpdate]) -> IngestResult:
        """Store the transaction's updates with its id, in one engine transaction. If
        that fails in a way no retry would fix (the data meeting a bug), store it piece
        by piece instead and leave out only the pieces that fail: one event must not
        hold up the rest of its transaction, nor every later one."""
        assert self.engine is not None
        engine = self.engine
        try:
            return await engine.ingest(updates, appservice_txn=txn_id)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.error("transaction %s: storing it raised %s; storing it room by room and "
                      "event by event instead, leaving out what fails", shown(txn_id),
                      where(exc))
        results: list[IngestResult] = []
        for update in updates:
            results.extend(await self._ingest_pieces(update))
        try:
            results.append(await engine.ingest([], appservice_txn=txn_id))
        except Exception as exc:
            if is_transient(exc):
                raise
            # Not even an empty batch: the engine fails whatever the data.
            raise TryLater(f"the engine cannot store anything ({where(exc)})") from exc
        return IngestResult(
            policy_changes=tuple(c for r in results for c in r.policy_changes),
            invalid_policies=tuple(i for r in results for i in r.invalid_policies),
            tracked=sum(r.tracked for r in results),
            emptied_rooms=tuple(e for r in results for e in r.emptied_rooms),
            redacted=tuple(e for r in results for e in r.redacted),
        )

    async def _ingest_pieces(self, update: RoomUpdate) -> list[IngestResult]:
        """One room's update in its own engine transaction; failing that, each timeline
        event, each receipt and the room's last event alone, in order."""
        assert self.engine is not None
        engine = self.engine
        try:
            return [await engine.ingest([update])]
        except Exception as exc:
            if is_transient(exc):
                raise
        room = update.room_id
        pieces = [
            *(RoomUpdate(room, (item,)) for item in update.timeline),
            *(RoomUpdate(room, receipts=(receipt,)) for receipt in update.receipts),
            RoomUpdate(room, last_event_id=update.last_event_id),
        ]
        results = []
        for piece in pieces:
            try:
                results.append(await engine.ingest([piece]))
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.stats.skipped += 1
                log.error("skipped %s in %s: storing it raised %s", _piece(piece),
                          shown(room), where(exc))
        return results

    def _by_room(self, txn: PushedTransaction) -> dict[str, _RoomBatch]:
        """Split a transaction into rooms, keeping each room's events in order, and
        leave out (logged: ids, never content) each event or receipt that is
        malformed."""
        body = txn.body
        batches: dict[str, _RoomBatch] = {}
        events = body.get("events", [])
        if not isinstance(events, list):
            log.warning("transaction %s: its events are not a list; none of them can be "
                        "stored", shown(txn.txn_id))
            events = []
        for raw in events:
            event = clean_event(raw)
            if isinstance(event, Skipped):
                self._skipped(event)
                continue
            batches.setdefault(event["room_id"], _RoomBatch()).events.append(event)
        # Homeservers send the same list under the stable and the unstable key; use one.
        ephemeral = next((body[k] for k in EPHEMERAL_KEYS if isinstance(body.get(k), list)),
                         [])
        for edu in ephemeral:
            if not isinstance(edu, Mapping) or edu.get("type") != "m.receipt":
                continue  # typing, presence: not the bridge's business
            room_id = edu.get("room_id")
            receipts, bad = clean_receipts(edu.get("content"))
            if not is_id(room_id, "!") or not isinstance(edu.get("content"), Mapping):
                bad, receipts = bad + len(receipts) + 1, []
            if bad:
                self.stats.skipped += bad
                log.warning("transaction %s: skipped malformed receipts in %s",
                            shown(txn.txn_id), shown(room_id))
            if receipts:
                batches.setdefault(room_id, _RoomBatch()).receipts.extend(receipts)
        return batches

    def _skipped(self, skipped: Skipped) -> None:
        self.stats.skipped += 1
        log.warning("skipped event %s in %s: %s", shown(skipped.event_id),
                    shown(skipped.room_id), skipped.reason)

    async def _read_room(self, room_id: str, batch: _RoomBatch) -> RoomReading:
        view = self.rooms.get(room_id)
        if view is None:
            view = self.rooms[room_id] = RoomView(room_id)
        initial = []
        first_sight = not view.loaded
        if first_sight:
            if any(e.get("type") == "m.room.create" for e in batch.events):
                state: list[Mapping[str, Any]] | None = []  # it is all in the push
            else:
                state = await self._fetch_state(view, batch)
            assert self.engine is not None
            initial = self._reader.load(view, state or [], batch.events,
                                        complete=state is not None,
                                        known=await self.engine.room(room_id) is not None)
        return self._reader.read(view, initial, batch.events, batch.receipts,
                                 first_sight=first_sight)

    async def _fetch_state(
        self, view: RoomView, batch: _RoomBatch
    ) -> list[Mapping[str, Any]] | None:
        """The room's current state, read as one of its local members (the bridge is
        not a member itself); None when no new candidate could read it."""
        assert self.http is not None
        room_id = view.room_id
        joining = _joining(batch)
        candidates = [u for u in self._state_readers(batch)
                      if u in joining or u not in view.state_tried]
        for user in candidates:
            view.state_tried.add(user)
            params = {} if user == self.config.user_id else {"user_id": user}
            reply = await self.http.full_state(room_id, **params)
            if reply.ok:
                chunk = reply.body.get("chunk")
                state = []
                for raw in chunk if isinstance(chunk, list) else []:
                    event = clean_event(raw, room_id)
                    if isinstance(event, Skipped):
                        self._skipped(event)
                    else:
                        state.append(event)
                return state
            if reply.status == 429 or reply.status >= 500:
                view.state_tried.discard(user)
                raise HomeserverUnavailable(f"reading the state of {room_id}: "
                                            f"HTTP {reply.status}")
            log.debug("cannot read the state of %s as %s: %s", room_id, user,
                      reply.errcode or reply.status)
        if candidates:
            log.warning("cannot read the state of %s as any local member yet; until then its "
                        "members and policy are learnt from its events", room_id)
        return None

    def _state_readers(self, batch: _RoomBatch) -> list[str]:
        """Local users likely to be joined: members joining in the batch, senders,
        readers; then the bridge's own bot."""
        senders = [e.get("sender") for e in batch.events if e.get("type") != "m.room.member"]
        readers = [r.user_id for r in batch.receipts]
        found: list[str] = []
        for user in [*_joining(batch), *senders, *readers]:
            if isinstance(user, str) and self.config.is_local(user) and user not in found:
                found.append(user)
        bot = self.config.user_id
        return [*[u for u in found if u != bot][:STATE_READERS], bot]

    async def _follow_up(self, view: RoomView, reading: RoomReading) -> None:
        """After the commit: forget rooms that left bridge.rooms, record power, accept
        invites of the bridge's bot."""
        assert self.engine is not None
        if reading.forget:
            await self.engine.forget_room(view.room_id)
            view.recorded = None
            self.stats.unenforceable_rooms.discard(view.room_id)
        if not view.watched:
            return
        if reading.power_inputs_changed:
            await self._record_power(view)
        if reading.invited_by is not None:
            await self._join(view.room_id, reading.invited_by)

    async def _record_owner(self, view: RoomView) -> None:
        """Which Lethe bot enforces the room now, if any, for `lethe bridge rooms`."""
        assert self.engine is not None
        owner = self._reader.deferred_to(view)
        if self._owners.get(view.room_id) == owner:
            return
        if owner is None:
            self._owners.pop(view.room_id, None)
        else:
            self._owners[view.room_id] = owner
        log.info("%s is enforced by %s", view.room_id, owner or "the bridge")
        async with self.engine.store.transaction():
            await self.engine.store.set_meta(OWNERS_META, json.dumps(self._owners))

    async def _record_power(self, view: RoomView) -> None:
        assert self.engine is not None
        await self._record_owner(view)
        enforcement = self._reader.enforcement(view)
        if enforcement == view.recorded:
            return
        view.recorded = enforcement
        await self.engine.set_power(view.room_id, enforcement.can_redact,
                                    enforcement.bot_level, enforcement.redact_level)
        if enforcement.can_redact:
            if view.room_id in self.stats.unenforceable_rooms:
                self.stats.unenforceable_rooms.discard(view.room_id)
                log.info("%s: the bridge can redact every message there again", view.room_id)
            return
        if view.room_id not in self.stats.unenforceable_rooms:
            self.stats.unenforceable_rooms.add(view.room_id)
            level = "none" if not view.bot_joined else describe_level(
                enforcement.bot_level if enforcement.bot_level is not None else float("inf"))
            log.warning(
                "%s is not enforceable for its %d member(s) on other servers: the bridge's "
                "bot %s is %s with power level %s, redacting needs %d. Invite it and give it "
                "power level %d; until then their expired messages stay, kept scheduled.",
                view.room_id, enforcement.remote_members, self.config.user_id,
                "joined" if view.bot_joined else "not joined", level,
                enforcement.redact_level, enforcement.redact_level)

    async def _on_park(self, room_id: str, reason: str) -> None:
        if room_id not in self.stats.unenforceable_rooms:
            self.stats.unenforceable_rooms.add(room_id)
            log.warning("%s: cannot redact a remote sender's message (%s); the room is "
                        "listed as not enforceable until the bridge's bot %s has power there",
                        room_id, reason, self.config.user_id)

    async def _join(self, room_id: str, inviter: str) -> None:
        assert self.http is not None
        try:
            reply = await self.http.request("POST", f"{CLIENT_V3}/rooms/{q(room_id)}/join",
                                            json={})
        except HomeserverUnavailable as exc:
            log.warning("could not join %s on the invite of %s: %s", room_id, inviter, exc)
            return
        if reply.ok:
            log.info("the bridge's bot joined %s on the invite of %s", room_id, inviter)
        else:
            log.warning("could not join %s on the invite of %s: %s", room_id, inviter,
                        reply.errcode or reply.status)


class BridgeTransport:
    """Redacts a local sender's event as that sender (no power needed), a remote
    sender's as the bridge's bot. A local sender who has left the room may not redact
    any more: then the bridge's bot tries, which works where it has power."""

    def __init__(self, http: MatrixHttp, is_local: Callable[[str], bool]) -> None:
        self._is_local = is_local
        self._as_sender = HttpTransport(http, as_user=lambda s: s if is_local(s) else None)
        self._as_bot = HttpTransport(http)

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        reply = await self._as_sender.redact(room_id, event_id, sender, txn_id)
        if reply.outcome is Outcome.FORBIDDEN and self._is_local(sender):
            return await self._as_bot.redact(room_id, event_id, sender, txn_id)
        return reply

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        reply = await self._as_sender.check(room_id, event_id, sender)
        if reply.outcome is Outcome.FORBIDDEN and self._is_local(sender):
            return await self._as_bot.check(room_id, event_id, sender)
        return reply


def _joining(batch: _RoomBatch) -> list[str]:
    """Users whose join is in the batch: they can read the room's state now, whatever
    an earlier attempt found."""
    found = []
    for event in batch.events:
        content = event.get("content")
        user = event.get("state_key")
        if (event.get("type") == "m.room.member" and isinstance(user, str)
                and isinstance(content, Mapping) and content.get("membership") == "join"):
            found.append(user)
    return found



def _piece(update: RoomUpdate) -> str:
    """What one piece of a room's update is, for a log line."""
    if update.timeline:
        item = update.timeline[0]
        return f"the {type(item).__name__} {shown(getattr(item, 'event_id', None))}"
    if update.receipts:
        receipt = update.receipts[0]
        return f"the receipt of {shown(receipt.user_id)} on {shown(receipt.event_id)}"
    return f"the last event {shown(update.last_event_id)}"
