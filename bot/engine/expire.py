"""``!lethe expire``'s part in the engine: one event (and what follows it) given a
deadline of its own, only ever earlier than the one it has."""

from __future__ import annotations

from bot.engine.model import TrackedEvent
from bot.engine.msgtimer import Expiry, Own
from bot.engine.policy import Policy
from bot.engine.store import StoreBackend


async def expire(store: StoreBackend, room_id: str, event_id: str, due_ms: int,
                 untracked: tuple[str, int] | None) -> Expiry:
    """Make ``event_id`` of ``room_id`` due at ``due_ms`` if that is earlier. An event
    not on a schedule there stays untracked, unless the front vouches for it with
    ``untracked`` (its sender and origin_server_ts, as the homeserver gave them): it is
    then tracked with this deadline alone (no rule of its own: a room whose policy is
    off). Its edits and reactions follow it as tracked children do."""
    async with store.transaction() as tx:
        result = await tx.expire(room_id, event_id, due_ms)
        if result is not Expiry.UNTRACKED or untracked is None:
            return result
        sender, origin_ts = untracked
        # Its timeline position, if Lethe saw it (receipts do not count for it: no rule).
        seq = await store.event_seq(room_id, event_id) or 0
        await tx.ensure_room(room_id)
        await tx.insert_events([TrackedEvent(
            event_id, room_id, sender, seq, origin_ts, None, None, Policy.off(), None,
            due_ms, own=Own.EXPIRE)])
        return Expiry.TRACKED
