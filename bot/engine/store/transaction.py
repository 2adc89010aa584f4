"""The one way to write: a ``Transaction`` is what ``Store.transaction()`` yields,
valid until that block ends; everything done through it commits or rolls back
together. Reads inside the block (on the Store) see its writes."""

from __future__ import annotations

from collections.abc import Sequence

from bot.engine.held import HeldEvent
from bot.engine.model import (
    DelayRef,
    DueEvent,
    MediaState,
    ReceiptMove,
    RedactionTarget,
    TrackedEvent,
)
from bot.engine.msgtimer import Expiry
from bot.engine.policy import Policy, StatePolicy
from bot.engine.store import (
    delayed,
    erasures,
    events,
    expiry,
    held,
    media,
    meta,
    receipts,
    rooms,
)
from bot.engine.store.conn import Connection
from bot.engine.store.errors import StoreError


class Transaction:
    def __init__(self, conn: Connection, due_rooms: events.DueRooms) -> None:
        self._live: Connection | None = conn
        self._due_rooms = due_rooms

    def _end(self) -> None:
        self._live = None

    @property
    def _conn(self) -> Connection:
        if self._live is None:
            raise StoreError("a transaction was used after it ended")
        return self._live

    # --- meta ----------------------------------------------------------------

    async def set_meta(self, key: str, value: str) -> None:
        await meta.set_meta(self._conn, key, value)

    async def record_appservice_txn(self, txn_id: str, now_ms: int) -> None:
        """With the events the pushed transaction carried: a re-sent id is then skipped."""
        await meta.record_appservice_txn(self._conn, txn_id, now_ms)

    # --- rooms and members ---------------------------------------------------

    async def ensure_room(self, room_id: str) -> None:
        await rooms.ensure_room(self._conn, room_id)

    async def set_room_policy(
        self, room_id: str, policy: Policy, sender: str | None,
        lethe_state: StatePolicy | None, beeper_state: StatePolicy | None,
    ) -> None:
        await rooms.set_room_policy(self._conn, room_id, policy, sender, lethe_state,
                                    beeper_state)

    async def set_room_power(
        self, room_id: str, can_redact_others: bool, bot_level: int | None,
        redact_level: int | None,
    ) -> None:
        """Regaining the power to redact others' events puts parked events back on the
        schedule."""
        await rooms.set_room_power(self._conn, room_id, can_redact_others, bot_level,
                                   redact_level)

    async def set_last_event(self, room_id: str, event_id: str) -> None:
        await rooms.set_last_event(self._conn, room_id, event_id)

    async def delete_room(self, room_id: str) -> None:
        """The bot left; nothing there can be redacted by it any more. The files of its
        messages stay too (those of messages already redacted are still deleted). Delayed
        redactions scheduled there are queued for cancelling."""
        await rooms.delete_room(self._conn, room_id)

    async def add_member(self, room_id: str, user_id: str, join_seq: int) -> None:
        """A member already present keeps its original join position."""
        await rooms.add_member(self._conn, room_id, user_id, join_seq)

    async def remove_member(self, room_id: str, user_id: str) -> bool:
        """Returns whether the user was a counted member; its receipts go with it."""
        return await rooms.remove_member(self._conn, room_id, user_id)

    # --- receipts and positions ----------------------------------------------

    async def move_receipt(self, room_id: str, user_id: str, thread: str, seq: int) -> int | None:
        """Move the receipt forward (receipts never move back); returns the position it
        moved from (0 if it is new), or None if it did not move."""
        return await receipts.move_receipt(self._conn, room_id, user_id, thread, seq)

    async def insert_positions(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """(room_id, event_id, seq) of timeline events. An event seen twice (backfill
        overlap) keeps its first position, as in ``events``."""
        await receipts.insert_positions(self._conn, rows)

    async def cap_positions(self, room_id: str, keep: int) -> int:
        """Keep only the room's newest ``keep`` positions. Costs a walk over ``keep``
        index entries, so callers run it now and then. Returns how many went."""
        return await receipts.cap_positions(self._conn, room_id, keep)

    async def prune_positions(self, room_id: str) -> int:
        """Drop the room's positions no receipt can make count any more (a position
        before its oldest unread event). Returns how many went."""
        return await receipts.prune_positions(self._conn, room_id)

    async def cover(self, room_id: str, user_id: str, thread: str, old_seq: int, new_seq: int,
                    read_at: int) -> int:
        """Right after member ``user_id``'s receipt on ``thread`` moved from ``old_seq``
        (0: none) to ``new_seq``: count it as a reader of what it newly covers. Events it
        was the last required reader of are read at ``read_at`` and due ``read_at +
        timer`` (never later than their cap). Returns how many events it counted for."""
        return await receipts.cover(self._conn, room_id, user_id, thread, old_seq, new_seq,
                                    read_at)

    async def cover_many(self, room_id: str, moves: Sequence[ReceiptMove]) -> int:
        """After the receipts of ``moves`` are stored: what ``cover`` does for each, in
        one pass (``reads.plan_cover_many``). Returns how many events changed."""
        return await receipts.cover_many(self._conn, room_id, moves)

    async def leave(self, room_id: str, user_id: str) -> int:
        """Before member ``user_id`` and its receipts are removed: it is no longer a
        reader the room's unread events wait for. ``mark_read`` then finds those it was
        the last one of. Returns how many events waited for it."""
        return await receipts.leave(self._conn, room_id, user_id)

    async def mark_read(self, room_id: str, read_at: int, max_seq: int) -> int:
        """Every unread after_read event of the room up to ``max_seq`` that no required
        reader is left to read is read at ``read_at`` and due ``read_at + timer`` (never
        later than its cap). Returns how many."""
        return await receipts.mark_read(self._conn, room_id, read_at, max_seq)

    async def recount_readers_left(self, room_id: str) -> None:
        """Count every unread event's readers from scratch (members x events: for tools)."""
        await self._conn.execute(receipts.RECOUNT, {"room_id": room_id})

    # --- events --------------------------------------------------------------

    async def insert_events(self, rows: Sequence[TrackedEvent]) -> None:
        """An event seen twice (backfill overlap) keeps its first row. Their files
        (``TrackedEvent.media``) are held until the message is gone."""
        await events.insert_events(self._conn, rows)

    async def expire(self, room_id: str, event_id: str, due_ms: int) -> Expiry:
        """Give a tracked event a deadline of its own, if earlier than its own."""
        return await expiry.expire(self._conn, room_id, event_id, due_ms)

    async def reset_in_flight(self) -> None:
        """On start: whatever a previous process had in flight is due again."""
        await events.reset_in_flight(self._conn)

    async def claim_due(self, now_ms: int, limit: int) -> list[DueEvent]:
        """Mark up to ``limit`` due events in flight and return them: SENT ones whose
        echo is overdue, and events whose time has come, earliest first while they all
        fit. When more are due than fit (a backlog), rooms take turns, so one room's
        flood cannot hold back the others."""
        return await events.claim_due(self._conn, self._due_rooms, now_ms, limit)

    async def record_txn(self, event_id: str, txn_id: str) -> None:
        """Before the request, so a retry after a crash reuses the transaction id."""
        await events.record_txn(self._conn, event_id, txn_id)

    async def mark_sent(self, event_id: str, redaction_id: str, check_at: int) -> None:
        """The homeserver accepted the redaction: wait for its echo until ``check_at``."""
        await events.mark_sent(self._conn, event_id, redaction_id, check_at)

    async def reschedule(self, event_id: str, due_at: int) -> None:
        await events.reschedule(self._conn, event_id, due_at)

    async def park(self, room_id: str, event_id: str) -> None:
        """No power to redact others' events here: keep it due, out of the loop, until
        the power returns."""
        await events.park(self._conn, room_id, event_id)

    async def fail(self, room_id: str, event_id: str) -> None:
        await events.fail(self._conn, room_id, event_id)

    async def finish_redacted(self, room_id: str, event_id: str, now_ms: int, *,
                              fired: bool = False) -> bool:
        """Verified gone: drop the row, count it, enter it in the erasure ledger, make its
        files due, and let its edits, reactions and poll responses follow at once. False
        if the row was already gone. ``fired``: by the delayed redaction the homeserver
        held for it; otherwise one still held is queued for cancelling."""
        return await events.finish_redacted(self._conn, room_id, event_id, now_ms,
                                            fired=fired)

    async def redaction_target(self, room_id: str, event_id: str) -> RedactionTarget | None:
        """The tracked row a redaction seen in the event stream targets, if any."""
        return await events.redaction_target(self._conn, room_id, event_id)

    async def forget(self, room_id: str, event_id: str) -> None:
        """Somebody else redacted it: drop the row (its files are due), and the rows
        tracked only to follow it (with their files: those messages stay); its own
        edits, reactions and poll responses keep their own deadline. Its delayed
        redaction, if any, is queued for cancelling."""
        await events.forget(self._conn, room_id, event_id)

    # --- held events (bot/engine/holds.py) -------------------------------------

    async def hold(self, room_id: str, event_id: str) -> bool:
        """Exempt the event from expiry (see store/held.py); False if it is on its way
        out already."""
        return await held.hold(self._conn, room_id, event_id)

    async def fill_held(self, event_id: str, row: TrackedEvent | None) -> None:
        """A held event's echo: the rule it was sent under (``row``; None: none)."""
        await held.fill(self._conn, event_id, row)

    async def take_held(self, room_id: str, event_id: str) -> HeldEvent | None:
        return await held.take(self._conn, room_id, event_id)

    # --- media ---------------------------------------------------------------

    async def settle_media(self, server: str, media_id: str, state: MediaState,
                           now_ms: int) -> None:
        """The file is DELETED (or already gone), or REMOTE (not this server's)."""
        await media.settle(self._conn, server, media_id, state, now_ms)

    async def retry_media(self, server: str, media_id: str, retry_at: int) -> None:
        await media.retry(self._conn, server, media_id, retry_at)

    async def prune_media(self, before_ms: int) -> int:
        """Forget the ids of files settled before ``before_ms``; returns how many."""
        return await media.prune(self._conn, before_ms)

    # --- the erasure ledger ------------------------------------------------------

    async def prune_ledger(self, before_ms: int) -> int:
        """Forget the ledger's entries confirmed before ``before_ms``; returns how many."""
        return await erasures.prune(self._conn, before_ms)

    # --- delayed redactions (bot/engine/delayed.py) ------------------------------

    async def begin_arm(self, event_id: str, txn_id: str, by: str, at: int) -> bool:
        """Before the request: the transaction id of the delayed redaction ``by`` is to
        schedule, firing at ``at``. False if the event is no longer waiting for one."""
        return await delayed.begin_arm(self._conn, event_id, txn_id, by, at)

    async def armed(self, event_id: str, txn_id: str, delay_id: str, grace_ms: int) -> bool:
        """The homeserver holds it: Lethe's own redaction waits until ``grace_ms`` after
        it fires. False if the event went meanwhile (then cancel ``delay_id``)."""
        return await delayed.armed(self._conn, event_id, txn_id, delay_id, grace_ms)

    async def adopt(self, event_id: str, delay_id: str, by: str, at: int,
                    grace_ms: int) -> bool:
        """A delayed redaction found in ``by``'s list is the event's (see store.delayed)."""
        return await delayed.adopt(self._conn, event_id, delay_id, by, at, grace_ms)

    async def disarm(self, event_id: str, *, never: bool, delay_id: str | None = None) -> bool:
        """The event's delayed redaction is no more; ``never``: Lethe redacts it itself."""
        return await delayed.disarm(self._conn, event_id, never=never, delay_id=delay_id)

    async def leave_to_lethe(self, event_id: str) -> None:
        """An event with no delayed redaction is to get none: Lethe redacts it."""
        await delayed.leave_to_lethe(self._conn, event_id)

    async def queue_cancel(self, ref: DelayRef) -> None:
        await delayed.queue_cancel(self._conn, ref)

    async def cancel_done(self, job_id: int) -> None:
        await delayed.cancel_done(self._conn, job_id)

    async def cancel_later(self, job_id: int, not_before: int) -> None:
        await delayed.cancel_later(self._conn, job_id, not_before)
