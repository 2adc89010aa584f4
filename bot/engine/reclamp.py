"""On start: every tracked room's policy enforced under the bounds configured now
(bot/engine/bounds.py). Bounds changed in the config between runs move the policy
new messages get, in both directions (a bound removed gives back the state's own
policy); messages tracked already keep the deadlines they were given."""

from __future__ import annotations

import logging

from bot.engine.bounds import BoundsConfig, declared_policy
from bot.engine.policy import Policy
from bot.engine.store import StoreBackend

log = logging.getLogger(__name__)


# meta key: the bounds (and default policy) the stored rooms were last clamped under.
APPLIED_KEY = "bounds_applied"


async def reclamp_rooms(store: StoreBackend, bounds: BoundsConfig, default: Policy) -> int:
    """Store each room's policy as the bounds enforce it now; how many changed. Only
    when the configured bounds changed since the last run: a room met since was
    clamped when it was ingested, so a start with the same config reads no room."""
    applied = repr((bounds, default))  # frozen dataclasses: a stable description
    if await store.get_meta(APPLIED_KEY) == applied:
        return 0
    changed = 0
    rows = await store.list_rooms()
    async with store.transaction() as tx:
        await tx.set_meta(APPLIED_KEY, applied)
        for row in rows:
            room_bounds = bounds.for_room(row.room_id)
            declared = declared_policy(row, default)
            enforced = room_bounds.clamp(declared)
            if enforced == row.policy:
                continue
            problem = room_bounds.check(declared)
            log.warning("policy of %s now enforced as %s (was %s): %s", row.room_id,
                        enforced.describe(), row.policy.describe(),
                        problem or "the bounds no longer change it")
            await tx.set_room_policy(row.room_id, enforced, row.policy_sender,
                                     row.lethe_state, row.beeper_state)
            changed += 1
    return changed
