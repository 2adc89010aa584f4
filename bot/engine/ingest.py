"""Apply what a front saw (room updates in timeline order) to the store, atomically.

Each event is tracked under the policy in force when it was sent; changing the
policy does not reach back to earlier messages (sweeps of history are explicit).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

from bot.engine import reads
from bot.engine.bounds import BoundsConfig
from bot.engine.echoes import Echo, EchoConfirmation
from bot.engine.holds import Holds
from bot.engine.ids import server_name
from bot.engine.model import (
    DueEvent,
    Fired,
    IngestResult,
    InvalidPolicy,
    MemberChange,
    Message,
    PolicyChange,
    PolicyEvent,
    Receipt,
    ReceiptMove,
    Redaction,
    RoomUpdate,
    TrackedEvent,
)
from bot.engine.msgtimer import Own, effective_policy
from bot.engine.policy import Mode, Policy
from bot.engine.roompolicy import RoomState, apply_policy_event
from bot.engine.sendtimes import SEEN_KEY, read_time, seen_time, sent_time
from bot.engine.store import StoreBackend, TransactionOps

log = logging.getLogger(__name__)

# Receipts often point at events that are not tracked (state events, messages sent
# while the policy was off, redacted ones): the position of every timeline event is
# stored (``positions``), in the transaction of the sync that brought it, so such
# receipts count across restarts too. Each batch prunes a room's positions to those a
# receipt could still make count (prune_positions). On top, a room keeps at most
# its newest _POSITIONS_PER_ROOM: a receipt on an event that far back, while a message
# before it is still unread, is then lost, but the reader's next receipt on anything
# newer covers the same, and the cap applies regardless. Checking that cap walks the
# index, so it runs on a room's first batch after a start and then every
# _CAP_CHECK_EVERY positions: at most _POSITIONS_PER_ROOM + _CAP_CHECK_EVERY rows.
_POSITIONS_PER_ROOM = 10_000
_CAP_CHECK_EVERY = 1_000


# More receipts than this from members of one room in one batch are counted in one pass
# (cover_many) rather than one statement each (cover).
_BULK_RECEIPTS = 16


@dataclass(frozen=True)
class IngestConfig:
    bot_user_id: str
    ignore_readers: tuple[str, ...] = ()
    default_cap_ms: int = 7 * 24 * 3600 * 1000
    # For rooms whose state holds no policy event (the bridge's server-wide default).
    default_policy: Policy = field(default_factory=Policy.off)
    track_media: bool = False  # keep the ids of tracked messages' files (media deletion)
    bounds: BoundsConfig = field(default_factory=BoundsConfig)  # the operator's


class Ingestor:
    def __init__(
        self, store: StoreBackend, config: IngestConfig, echoes: EchoConfirmation
    ) -> None:
        self._store = store
        self._config = config
        self._echoes = echoes
        self._seq = 0
        # Positions stored per room since its cap was last checked (absent: not yet).
        self._uncapped: dict[str, int] = {}
        self._home = server_name(config.bot_user_id)
        # Lethe's clock when it stored the batch before the one being applied (None:
        # never, or before it kept this); see sendtimes.MAX_SKEW_MS.
        self._previous_ms: int | None = None
        self._newest_sent: int | None = None  # of the batch being applied
        self.holds: Holds | None = None  # the bot's events exempt from expiry, if any

    async def load(self) -> None:
        self._seq = await self._store.max_seq()
        previous = await self._store.get_meta(SEEN_KEY)  # only this Ingestor writes it
        self._previous_ms = int(previous) if previous is not None else None

    def counts_as_reader(self, user_id: str) -> bool:
        if user_id == self._config.bot_user_id:
            return False
        return not any(fnmatch.fnmatchcase(user_id, glob) for glob in self._config.ignore_readers)

    async def apply(
        self,
        updates: list[RoomUpdate],
        now_ms: int,
        meta: dict[str, str] | None = None,
        appservice_txn: str | None = None,
    ) -> IngestResult:
        """One transaction: every update, plus ``meta`` (e.g. the sync token that produced
        them) or the id of the appservice transaction that carried them, so a crash can
        never store the token without the events or vice versa."""
        changes: list[PolicyChange] = []
        invalid: list[InvalidPolicy] = []
        redacted: list[DueEvent] = []
        fired: list[Fired] = []
        tracked = 0
        self._newest_sent = None
        async with self._store.transaction() as tx:
            for update in updates:
                room = await self._load_room(tx, update.room_id)
                tracked += await self._apply_timeline(tx, update, room, now_ms, invalid,
                                                      redacted, fired)
                if room.read_dirty:
                    # Before the receipts: what a leave completes is read now, not earlier.
                    await tx.mark_read(update.room_id, room.read_at, self._seq)
                await self._apply_receipts(tx, update, room, now_ms)
                await self._prune_positions(tx, update.room_id, room.positions)
                if room.policy_dirty:
                    await tx.set_room_policy(
                        update.room_id, room.policy, room.sender, room.lethe, room.beeper
                    )
                if room.changed or room.is_new:
                    changes.append(
                        PolicyChange(
                            update.room_id, room.policy, room.changed_by or "", room.is_new,
                            room.bound,
                        )
                    )
                if update.last_event_id:
                    await tx.set_last_event(update.room_id, update.last_event_id)
            await tx.set_meta("seq", str(self._seq))
            seen = seen_time(now_ms, self._newest_sent, self._previous_ms)
            await tx.set_meta(SEEN_KEY, str(seen))
            for key, value in (meta or {}).items():
                await tx.set_meta(key, value)
            if appservice_txn is not None:
                await tx.record_appservice_txn(appservice_txn, now_ms)
        self._previous_ms = seen  # committed
        return IngestResult(tuple(changes), tuple(invalid), tracked, redacted=tuple(redacted),
                            fired=tuple(fired))

    async def _load_room(self, tx: TransactionOps, room_id: str) -> RoomState:
        row = await self._store.get_room(room_id)
        if row is None:
            await tx.ensure_room(room_id)
        members = await self._store.members(room_id)
        bounds = self._config.bounds.for_room(room_id)
        default = bounds.clamp(self._config.default_policy)
        if row is None:
            return RoomState(default, None, None, None, members, is_new=True,
                             policy_dirty=default.active, bounds=bounds)
        room = RoomState(row.policy, row.lethe_state, row.beeper_state, row.policy_sender,
                         members, False, bounds=bounds)
        if row.lethe_state is None and row.beeper_state is None and row.policy != default:
            # No policy in the room's state: the default applies, as configured now.
            room.policy, room.sender, room.policy_dirty = default, None, True
        return room

    def _held(self, msg: Message) -> bool:
        return (self.holds is not None and msg.sender == self._config.bot_user_id
                and self.holds.awaits(msg.event_id))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _apply_timeline(
        self,
        tx: TransactionOps,
        update: RoomUpdate,
        room: RoomState,
        now_ms: int,
        invalid: list[InvalidPolicy],
        redacted: list[DueEvent],
        fired: list[Fired],
    ) -> int:
        room_id = update.room_id
        parents = {i.parent_id for i in update.timeline if isinstance(i, Message) and i.parent_id}
        # Only this room's events: a relation naming an event elsewhere follows nothing.
        tracked_parents = (
            await self._store.known_event_ids(parents, room_id=room_id) if parents else set()
        )
        rows: list[TrackedEvent] = []
        positions: list[tuple[str, str, int]] = []
        for item in update.timeline:
            # Every timeline event is a position a receipt may point at.
            if item.event_id is not None:
                positions.append((room_id, item.event_id, self._next_seq()))
            if isinstance(item, Message):
                row = self._track(room_id, room, item, self._seq, tracked_parents, now_ms)
                if self._held(item):
                    await tx.fill_held(item.event_id, row)  # pinned: see engine/holds.py
                elif row is not None:
                    rows.append(row)
                    tracked_parents.add(item.event_id)
            elif isinstance(item, MemberChange):
                await self._member(tx, room_id, room, item, now_ms)
            elif isinstance(item, PolicyEvent):
                apply_policy_event(room_id, room, item, invalid,
                                   self._config.default_cap_ms)
            elif isinstance(item, Redaction):
                # Flush first: the target may be in this very batch.
                await tx.insert_events(rows)
                rows = []
                seen = await self._echoes.seen(tx, room_id, item.target, item.event_id,
                                               item.sender, now_ms, delay_id=item.delay_id)
                if isinstance(seen, DueEvent):
                    redacted.append(seen)
                elif isinstance(seen, Fired):
                    fired.append(seen)
                if isinstance(seen, DueEvent | Fired) or seen is Echo.FORGOTTEN:
                    # Its row is gone: a later relation to it in this batch has nothing
                    # to follow, and must not wait on it forever.
                    tracked_parents.discard(item.target)
        await tx.insert_events(rows)
        positions = await self._kept_positions(update, positions)
        await tx.insert_positions(positions)
        room.positions = len(positions)
        return len(rows)

    async def _kept_positions(
        self, update: RoomUpdate, positions: list[tuple[str, str, int]]
    ) -> list[tuple[str, str, int]]:
        """The positions the pruning after this update keeps, and those its receipts name
        (read before the pruning): with nothing unread in the room, this batch's events
        included, prune_positions keeps only the newest. Writing the rest to delete them
        at once cost two index inserts and two deletes per event (benchmark 4)."""
        if len(positions) <= 1 or await self._store.has_unread(update.room_id):
            return positions
        named = {receipt.event_id for receipt in update.receipts}
        return [p for p in positions[:-1] if p[1] in named] + positions[-1:]

    def _track(
        self,
        room_id: str,
        room: RoomState,
        msg: Message,
        seq: int,
        tracked_parents: set[str],
        now_ms: int,
    ) -> TrackedEvent | None:
        # A message's own timer is held to the bounds too: none in an only-off room,
        # never shorter than the shortest bound.
        policy = room.policy if msg.timer is None else room.bounds.clamp(
            effective_policy(room.policy, msg.timer, self._config.default_cap_ms))
        media = msg.media if self._config.track_media else ()
        child = msg.parent_id is not None and msg.parent_id in tracked_parents
        sent = sent_time(msg.origin_ts, now_ms, self._previous_ms)
        self._newest_sent = sent if self._newest_sent is None else max(self._newest_sent, sent)
        if not policy.active:
            if not child:
                return None
            # Tracked only so it can follow its parent; no deadline of its own.
            return TrackedEvent(
                msg.event_id, room_id, msg.sender, seq, msg.origin_ts, msg.thread_id,
                msg.parent_id, policy, None, None, sent, media=media,
            )
        read_at: int | None = None
        readers_left: int | None = None
        if policy.mode is Mode.AFTER_READ:
            required = room.members - {msg.sender}
            if required:
                readers_left = len(required)
            else:
                read_at = sent
        due = policy.deadline(sent, read_at)
        return TrackedEvent(
            msg.event_id, room_id, msg.sender, seq, msg.origin_ts, msg.thread_id,
            msg.parent_id if child else None, policy, read_at, due, sent, readers_left,
            media, Own.NONE if policy == room.policy else Own.TIMER,
        )

    async def _prune_positions(self, tx: TransactionOps, room_id: str, stored: int) -> None:
        """After the room's receipts: see _POSITIONS_PER_ROOM."""
        await tx.prune_positions(room_id)
        since = self._uncapped.get(room_id)
        if since is None or since + stored >= _CAP_CHECK_EVERY:
            await tx.cap_positions(room_id, _POSITIONS_PER_ROOM)
            self._uncapped[room_id] = 0
        else:
            self._uncapped[room_id] = since + stored

    async def _member(
        self, tx: TransactionOps, room_id: str, room: RoomState, change: MemberChange,
        now_ms: int,
    ) -> None:
        if not self.counts_as_reader(change.user_id):
            return
        if change.joined:
            if change.user_id not in room.members:
                room.members.add(change.user_id)
                await tx.add_member(room_id, change.user_id, self._seq)
        elif change.user_id in room.members:
            room.members.discard(change.user_id)
            await tx.leave(room_id, change.user_id)
            await tx.remove_member(room_id, change.user_id)
            # One fewer required reader: some messages may now count as read by all.
            room.read_dirty = True
            room.read_at = max(room.read_at, now_ms)

    async def _apply_receipts(
        self, tx: TransactionOps, update: RoomUpdate, room: RoomState, now_ms: int
    ) -> None:
        """Each receipt counts for what it newly covers (cover), in the order of
        their read times: a message is read when its last required reader read it,
        whatever order the receipts come in (earlier batches' read times are all before
        this batch's, see read_time)."""
        found: list[tuple[int, Receipt, int]] = []
        for receipt in update.receipts:
            seq = await self._receipt_seq(update.room_id, receipt)
            if seq is None:
                # Never seen (sent before the bot joined, or in a gap it did not page
                # back over), or pruned as too old to matter. Worth an INFO line only
                # where a receipt could still make something due.
                could_matter = await self._store.has_unread(update.room_id)
                log.log(
                    logging.INFO if could_matter else logging.DEBUG,
                    "receipt in %s on %s, an event Lethe has no position for; ignored",
                    update.room_id, receipt.event_id,
                )
                continue
            local = server_name(receipt.user_id) == self._home
            found.append((read_time(receipt.ts, local, now_ms, self._previous_ms), receipt, seq))
        found.sort(key=lambda item: item[0])
        counted = [item for item in found if item[1].user_id in room.members]
        bulk = len(counted) > _BULK_RECEIPTS
        moves: list[ReceiptMove] = []
        for read_at, receipt, seq in found:
            thread = reads.receipt_thread(receipt.thread_id)
            old = await tx.move_receipt(update.room_id, receipt.user_id, thread, seq)
            if old is None or receipt.user_id not in room.members:
                continue
            if bulk:
                moves.append(ReceiptMove(receipt.user_id, thread, old, seq, read_at))
            else:
                await tx.cover(update.room_id, receipt.user_id, thread, old, seq, read_at)
        await tx.cover_many(update.room_id, moves)

    async def _receipt_seq(self, room_id: str, receipt: Receipt) -> int | None:
        return await self._store.event_seq(room_id, receipt.event_id)
