"""A room the bridge meets for the first time: its current state, read as one of its
local members (the bridge is not a member itself)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bridge.config import BridgeConfig
from bridge.intake import Skipped, clean_event
from bridge.rooms import RoomView
from bridge.transaction import BridgeStats, RoomBatch

log = logging.getLogger(__name__)

STATE_READERS = 5  # local members tried when reading a newly seen room's state


class StateFetcher:
    def __init__(self, http: MatrixHttp, config: BridgeConfig, stats: BridgeStats) -> None:
        self._http = http
        self._config = config
        self._stats = stats

    async def fetch(self, view: RoomView, batch: RoomBatch) -> list[Mapping[str, Any]] | None:
        """The room's current state; None when no new candidate could read it."""
        room_id = view.room_id
        joining = _joining(batch)
        candidates = [u for u in self._state_readers(batch)
                      if u in joining or u not in view.state_tried]
        for user in candidates:
            view.state_tried.add(user)
            params = {} if user == self._config.user_id else {"user_id": user}
            reply = await self._http.full_state(room_id, **params)
            if reply.ok:
                chunk = reply.body.get("chunk")
                state = []
                for raw in chunk if isinstance(chunk, list) else []:
                    event = clean_event(raw, room_id)
                    if isinstance(event, Skipped):
                        self._stats.skipped_event(event)
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

    def _state_readers(self, batch: RoomBatch) -> list[str]:
        """Local users likely to be joined: members joining in the batch, senders,
        readers; then the bridge's own bot."""
        senders = [e.get("sender") for e in batch.events if e.get("type") != "m.room.member"]
        readers = [r.user_id for r in batch.receipts]
        found: list[str] = []
        for user in [*_joining(batch), *senders, *readers]:
            if isinstance(user, str) and self._config.is_local(user) and user not in found:
                found.append(user)
        bot = self._config.user_id
        return [*[u for u in found if u != bot][:STATE_READERS], bot]


def _joining(batch: RoomBatch) -> list[str]:
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
