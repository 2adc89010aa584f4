"""One pushed transaction: split into rooms, then stored in one engine transaction
with its id. Malformed events and receipts are left out, each on its own (logged:
ids, never content); a transaction the engine fails on as a whole is stored room by
room and event by event instead, leaving out only what fails."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.engine.engine import Engine
from bot.engine.model import IngestResult, Receipt, RoomUpdate
from bot.matrix.events import clean_receipts, is_id
from bridge.intake import (
    PushedTransaction,
    Skipped,
    TryLater,
    clean_event,
    is_transient,
    shown,
    where,
)

log = logging.getLogger(__name__)

EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")


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
    # Rooms where the bridge may not redact others' messages (remote senders').
    cannot_redact_others: set[str] = field(default_factory=set)

    def skipped_event(self, skipped: Skipped) -> None:
        self.skipped += 1
        log.warning("skipped event %s in %s: %s", shown(skipped.event_id),
                    shown(skipped.room_id), skipped.reason)


@dataclass
class RoomBatch:
    events: list[Mapping[str, Any]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)


def by_room(txn: PushedTransaction, stats: BridgeStats) -> dict[str, RoomBatch]:
    """Split a transaction into rooms, keeping each room's events in order, and leave
    out (logged: ids, never content) each event or receipt that is malformed."""
    body = txn.body
    batches: dict[str, RoomBatch] = {}
    events = body.get("events", [])
    if not isinstance(events, list):
        log.warning("transaction %s: its events are not a list; none of them can be "
                    "stored", shown(txn.txn_id))
        events = []
    for raw in events:
        event = clean_event(raw)
        if isinstance(event, Skipped):
            stats.skipped_event(event)
            continue
        batches.setdefault(event["room_id"], RoomBatch()).events.append(event)
    # Homeservers send the same list under the stable and the unstable key; use one.
    ephemeral: list[Any] = next(
        (body[k] for k in EPHEMERAL_KEYS if isinstance(body.get(k), list)), [])
    for edu in ephemeral:
        if not isinstance(edu, Mapping) or edu.get("type") != "m.receipt":
            continue  # typing, presence: not the bridge's business
        room_id = edu.get("room_id")
        receipts, bad = clean_receipts(edu.get("content"))
        if not is_id(room_id, "!") or not isinstance(edu.get("content"), Mapping):
            bad, receipts = bad + len(receipts) + 1, []
        if bad:
            stats.skipped += bad
            log.warning("transaction %s: skipped malformed receipts in %s",
                        shown(txn.txn_id), shown(room_id))
        if receipts and isinstance(room_id, str):
            batches.setdefault(room_id, RoomBatch()).receipts.extend(receipts)
    return batches


async def ingest(engine: Engine, txn_id: str, updates: list[RoomUpdate],
                 stats: BridgeStats) -> IngestResult:
    """Store the transaction's updates with its id, in one engine transaction. If
    that fails in a way no retry would fix (the data meeting a bug), store it piece
    by piece instead and leave out only the pieces that fail: one event must not
    hold up the rest of its transaction, nor every later one."""
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
        results.extend(await _ingest_pieces(engine, update, stats))
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
        redacted=tuple(e for r in results for e in r.redacted),
    )


async def _ingest_pieces(engine: Engine, update: RoomUpdate,
                         stats: BridgeStats) -> list[IngestResult]:
    """One room's update in its own engine transaction; failing that, each timeline
    event, each receipt and the room's last event alone, in order."""
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
            stats.skipped += 1
            log.error("skipped %s in %s: storing it raised %s", _piece(piece),
                      shown(room), where(exc))
    return results


def _piece(update: RoomUpdate) -> str:
    """What one piece of a room's update is, for a log line."""
    if update.timeline:
        item = update.timeline[0]
        return f"the {type(item).__name__} {shown(getattr(item, 'event_id', None))}"
    if update.receipts:
        receipt = update.receipts[0]
        return f"the receipt of {shown(receipt.user_id)} on {shown(receipt.event_id)}"
    return f"the last event {shown(update.last_event_id)}"
