"""The sync reader: a nio sync response read into engine updates and follow-up work,
without I/O.

The bot persists the updates (one engine transaction, with the sync token) and
only then hands the follow-up work (joins, commands, notices, power checks) to
its action worker.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nio import InviteMemberEvent, ReceiptEvent, RoomMessageText, SyncResponse

from bot.engine.model import MemberChange, Message, PolicyEvent, Receipt, RoomUpdate, TimelineItem
from bot.engine.power import PowerState
from bot.front.commands import is_command
from bot.matrix.defaults import RoomKind, kind_of_invite
from bot.matrix.events import as_encrypted, receipts_from_ephemeral, to_item, to_items
from bot.matrix.expiry import reply_target
from bot.matrix.pins import PINNED_EVENTS_TYPE
from bot.matrix.roomstate import PowerSource, checked

log = logging.getLogger(__name__)

# Commands older than this when first seen (e.g. after a long outage) are not run.
COMMAND_MAX_AGE_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class Invite:
    """An invite of the bot: the action worker joins the room, or refuses."""

    room_id: str
    inviter: str | None
    is_direct: bool = False  # the invite says this is a direct chat (bot/front/defaults.py)


@dataclass(frozen=True)
class CommandRequest:
    room_id: str
    sender: str
    event_id: str
    body: str = field(repr=False)  # plaintext: never logged, never stored
    reply_to: str | None = None  # the event it replies to (m.in_reply_to), if any
    origin_ts: int = 0


@dataclass
class SyncReading:
    updates: list[RoomUpdate] = field(default_factory=list)
    invites: list[Invite] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    commands: list[CommandRequest] = field(default_factory=list)
    # Rooms whose create or power levels event arrived: power must be re-checked.
    power_changed: set[str] = field(default_factory=set)
    # Rooms whose pinned events somebody else changed (bot/front/pinning.py).
    pins_changed: set[str] = field(default_factory=set)
    # Commands seen but deliberately not run (a schedule rebuilt after a lost database).
    commands_skipped: int = 0


def inviter_allowed(inviter: str | None, allow: Sequence[str]) -> bool:
    return inviter is not None and any(fnmatch.fnmatchcase(inviter, glob) for glob in allow)


def _source(event: Any) -> Mapping[str, Any] | None:
    """The event's JSON. nio replaces a MegolmEvent it could decrypt by the decrypted
    event, whose ``source`` is the plaintext (type and content) with the envelope's
    event id, sender and time: read as the message it is (as_encrypted)."""
    source = getattr(event, "source", None)
    if not isinstance(source, Mapping):
        return None
    if getattr(event, "decrypted", False) is True:
        return as_encrypted(source, source.get("content"))
    return source


class SyncReader:
    """Holds what must survive between syncs: the power of each room (its create and
    power levels events), read from the state the homeserver sends."""

    def __init__(self, bot_user_id: str, prefix: str) -> None:
        self.bot_user_id = bot_user_id
        self.prefix = prefix
        self.power_sources: dict[str, PowerSource] = {}
        self._ephemeral: Mapping[str, object] | None = None
        self._run_commands = True

    def read(
        self,
        resp: SyncResponse,
        known_rooms: set[str],
        now_ms: int,
        backfill: Mapping[str, list[Mapping[str, Any]]] | None = None,
        *,
        ephemeral: Mapping[str, object] | None = None,
        run_commands: bool = True,
    ) -> SyncReading:
        """``backfill`` holds, per room, the raw events of a gap (oldest first) that the
        bot paged in from ``/messages`` because the timeline was limited. ``ephemeral``
        holds each room's raw ephemeral events (receipts are read from them, each on its
        own; without it, from nio's parse). With ``run_commands`` False no command is
        collected (counted in ``commands_skipped``)."""
        reading = SyncReading()
        self._ephemeral = ephemeral
        self._run_commands = run_commands
        for room_id, info in resp.rooms.invite.items():
            reading.invites.append(self._invite(room_id, info.invite_state))
        reading.left.extend(resp.rooms.leave.keys())
        for room_id, info in resp.rooms.join.items():
            gap = (backfill or {}).get(room_id)
            update = self._room(room_id, info, room_id not in known_rooms, now_ms, gap, reading)
            reading.updates.append(update)
        return reading

    def _invite(self, room_id: str, invite_state: Sequence[Any]) -> Invite:
        """The sender of the invite event itself, and its ``is_direct``. The stripped
        state before it comes from the inviting server, which can put a member event
        "from" anybody there; Synapse appends the real invite event last, so the last
        match is the one."""
        # nio keeps no raw source for stripped invite state, only parsed fields.
        for event in reversed(invite_state):
            if (
                isinstance(event, InviteMemberEvent)
                and event.state_key == self.bot_user_id
                and event.membership == "invite"
            ):
                sender = event.sender if isinstance(event.sender, str) else None
                return Invite(room_id, sender, kind_of_invite(event.content) is RoomKind.DM)
        return Invite(room_id, None)

    def _watch_power(self, room_id: str, source: Mapping[str, Any], reading: SyncReading) -> None:
        if self.power_sources.setdefault(room_id, PowerSource()).observe(source):
            reading.power_changed.add(room_id)
        elif source.get("type") == PINNED_EVENTS_TYPE and source.get("sender") != self.bot_user_id:
            reading.pins_changed.add(room_id)

    def power(self, room_id: str) -> PowerState:
        """The room's power as its state last said (nobody's, for a room not seen)."""
        return self.power_sources.get(room_id, PowerSource()).power

    def knows(self, room_id: str) -> bool:
        """Whether the room's create event was seen: a room the bot is in."""
        room = self.power_sources.get(room_id)
        return room is not None and room.create is not None

    def _room(
        self,
        room_id: str,
        info: Any,
        is_new: bool,
        now_ms: int,
        gap: list[Mapping[str, Any]] | None,
        reading: SyncReading,
    ) -> RoomUpdate:
        items: list[TimelineItem] = []
        source: Mapping[str, Any] | None  # one raw event at a time, in each loop below
        state_sources = [s for s in (_source(e) for e in info.state) if s is not None]
        for source in state_sources:
            self._watch_power(room_id, source, reading)
        if gap is None:
            # The state block is the state at the start of the timeline.
            items.extend(self._checked_state(
                room_id, to_items(state_sources, in_timeline=False), is_new))
        else:
            # The state block is the state at the start of the timeline, so what of it
            # the gap's events do not show being set was in force throughout them: it
            # goes first. This matters when the gap was not read to its start (too long):
            # its older policy and membership changes still apply.
            in_gap = {source.get("event_id") for source in gap}
            items.extend(self._checked_state(room_id, to_items(
                [s for s in state_sources if s.get("event_id") not in in_gap],
                in_timeline=False), is_new))
            for source in gap:
                if "state_key" in source:
                    self._watch_power(room_id, source, reading)
                gap_item = to_item(source)
                if gap_item is not None:
                    items.append(self._checked(room_id, gap_item))
        if is_new:
            reading.power_changed.add(room_id)

        timeline = list(info.timeline.events)
        sources = [_source(e) for e in timeline]
        start = 0
        if is_new:
            # Track only what was sent after the bot joined: older history is swept
            # only when explicitly asked.
            for index, source in enumerate(sources):
                if (
                    source
                    and source.get("type") == "m.room.member"
                    and source.get("state_key") == self.bot_user_id
                    and (source.get("content") or {}).get("membership") == "join"
                ):
                    start = index
        last_event_id = None
        seen_join = not is_new or start == 0
        for index, (event, source) in enumerate(zip(timeline, sources, strict=True)):
            if source is None:
                continue
            last_event_id = source.get("event_id") or last_event_id
            if "state_key" in source:
                self._watch_power(room_id, source, reading)
            item = to_item(source)
            if item is None:
                continue
            if index < start:
                # Before our join: keep state (policy, members), never track messages.
                if isinstance(item, MemberChange | PolicyEvent):
                    items.append(_as_state(item))
                continue
            if index == start:
                seen_join = True
            if (
                seen_join
                and isinstance(item, Message)
                and isinstance(event, RoomMessageText)
                and item.sender != self.bot_user_id
                and now_ms - item.origin_ts <= COMMAND_MAX_AGE_MS
                and is_command(event.body, self.prefix)
            ):
                if self._run_commands:
                    content = source.get("content")
                    reading.commands.append(CommandRequest(
                        room_id, item.sender, item.event_id, event.body,
                        reply_target(content) if isinstance(content, Mapping) else None,
                        item.origin_ts))
                else:
                    reading.commands_skipped += 1
            items.append(self._checked(room_id, item))

        return RoomUpdate(room_id, tuple(items), self._receipts(room_id, info), last_event_id)

    def _checked(self, room_id: str, item: TimelineItem) -> TimelineItem:
        """A policy event marked refused if its sender may not send both policy state
        events under the power levels at this point of the timeline."""
        return checked(item, self.power(room_id))

    def _checked_state(
        self, room_id: str, items: list[TimelineItem], is_new: bool
    ) -> list[TimelineItem]:
        # The state a room has when Lethe joins is taken as it stands: its policy was in
        # force before Lethe came, whoever may send what today.
        return items if is_new else [self._checked(room_id, i) for i in items]

    def _receipts(self, room_id: str, info: Any) -> tuple[Receipt, ...]:
        if self._ephemeral is None:
            return tuple(
                Receipt(r.user_id, r.event_id, r.thread_id, r.timestamp)
                for ev in info.ephemeral
                if isinstance(ev, ReceiptEvent)
                for r in ev.receipts
                if r.receipt_type == "m.read"
            )
        receipts, bad = receipts_from_ephemeral(self._ephemeral.get(room_id))
        if bad:
            log.warning("left out %d malformed receipt(s) in %s; the others count", bad, room_id)
        return tuple(receipts)


def _as_state(item: MemberChange | PolicyEvent) -> TimelineItem:
    if isinstance(item, MemberChange):
        return MemberChange(item.user_id, item.joined)
    return replace(item, in_timeline=False, event_id=None)
