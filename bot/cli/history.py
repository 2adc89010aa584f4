"""A room's history on the homeserver, newest first, with the retention policy and
the bot's membership as they were when each event was sent.

Walking backwards, a policy state event is undone by going back to the event it
replaced (``unsigned.replaces_state``), and the bot's own membership by its
``prev_content``. So every event is judged under the policy in force when it was
sent, as the engine judges it, and events sent while the bot was not in the room
are known as such. Nothing of an event's content is kept but its relation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.cli.context import Admin
from bot.cli.roomstate import RoomState
from bot.engine.model import Message
from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    POLICY_EVENT_TYPE,
    POLICY_STATE_TYPES,
    Policy,
    PolicyError,
    StatePolicy,
    resolve_policy,
)
from bot.matrix.api import page_back
from bot.matrix.events import is_redacted, to_item
from bot.matrix.roomstate import state_policy

PAGE_SIZE = 100
MAX_INVALID_CHAIN = 20  # invalid policy events skipped in a row looking for a valid one


@dataclass(frozen=True)
class PastEvent:
    """A non-state timeline event, as retention sees it."""

    event_id: str
    event_type: str
    sender: str
    origin_ts: int
    parent_id: str | None  # of an edit, reaction or poll response (None once redacted)
    redacted: bool
    policy: Policy  # in force when it was sent
    bot_joined: bool  # whether the bot was in the room when it was sent
    redacted_by: str | None = None  # who redacted it, where the homeserver says


def _unsigned(event: Mapping[str, Any]) -> Mapping[str, Any]:
    unsigned = event.get("unsigned")
    return unsigned if isinstance(unsigned, Mapping) else {}


class History:
    def __init__(self, admin: Admin, room: RoomState) -> None:
        self._admin = admin
        self._room = room
        self._fetched: dict[str, Mapping[str, Any] | None] = {}

    async def walk(
        self, since_ms: int | None = None, on_page: Callable[[int], None] | None = None
    ) -> list[PastEvent]:
        """Every non-state event (redactions themselves aside), newest first, back to
        ``since_ms`` or the start of the visible history. ``on_page`` gets the
        timestamp reached after each page."""
        admin, room_id = self._admin, self._room.room_id
        # The state event of each policy type in force at the current point of the walk.
        current: dict[str, Mapping[str, Any] | None] = dict.fromkeys(POLICY_STATE_TYPES)
        for view in self._room.policy_events:
            current[view.event_type] = view.raw
        policy = await self._policy(current)
        joined = True  # the bot is in the room now (resolve_room checked)
        found: list[PastEvent] = []

        async def fetch(token: str | None) -> dict[str, Any]:
            return await admin.expect(admin.http.messages(room_id, token, limit=PAGE_SIZE),
                                      f"reading the history of {room_id}")

        async for page in page_back(fetch, None):
            chunk = page.get("chunk")
            if not isinstance(chunk, list) or not chunk:
                return found
            for event in chunk:
                if not isinstance(event, Mapping):
                    continue
                ts = event.get("origin_server_ts")
                if not isinstance(ts, int):
                    continue
                if since_ms is not None and ts < since_ms:
                    return found
                kind = event.get("type")
                if "state_key" in event:
                    # Older events were sent before this one took effect.
                    if kind in POLICY_STATE_TYPES and event.get("state_key") == "":
                        current[str(kind)] = await self._replaced(event)
                        policy = await self._policy(current)
                    elif kind == "m.room.member" and event.get("state_key") == admin.bot:
                        before = _unsigned(event).get("prev_content")
                        joined = isinstance(before, Mapping) and \
                            before.get("membership") == "join"
                    continue
                if kind == "m.room.redaction":
                    continue
                item = to_item(event)
                event_id, sender = event.get("event_id"), event.get("sender")
                if not isinstance(event_id, str) or not isinstance(sender, str):
                    continue
                because = _unsigned(event).get("redacted_because")
                by = because.get("sender") if isinstance(because, Mapping) else None
                found.append(PastEvent(
                    event_id, str(kind), sender, ts,
                    item.parent_id if isinstance(item, Message) else None,
                    is_redacted(event), policy, joined,
                    by if isinstance(by, str) else None,
                ))
            if on_page is not None:
                on_page(found[-1].origin_ts if found else 0)
        return found

    async def _replaced(self, event: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The state event ``event`` replaced, if any (fetched once)."""
        replaced = _unsigned(event).get("replaces_state") or event.get("replaces_state")
        if not isinstance(replaced, str):
            return None
        if replaced not in self._fetched:
            self._fetched[replaced] = await self._admin.event(self._room.room_id, replaced)
        return self._fetched[replaced]

    async def _valid(self, event: Mapping[str, Any] | None) -> StatePolicy | None:
        """The policy of the latest valid event of its type, going back from ``event``:
        the engine ignores an invalid one and keeps what was in force."""
        for _ in range(MAX_INVALID_CHAIN):
            if event is None:
                return None
            try:
                return state_policy(event, self._admin.config.default_cap_ms)
            except PolicyError:
                event = await self._replaced(event)
        return None

    async def _policy(self, current: Mapping[str, Mapping[str, Any] | None]) -> Policy:
        winner = resolve_policy(
            await self._valid(current[POLICY_EVENT_TYPE]),
            await self._valid(current[BEEPER_EVENT_TYPE]),
        )
        return winner.policy if winner else Policy.off()
