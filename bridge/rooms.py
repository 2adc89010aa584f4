"""What the bridge knows about each room, and how one room's share of a pushed
transaction becomes an engine update. No I/O here.

Ownership (so a message is never redacted twice when the Lethe bot and the bridge
run against one homeserver): a message sent while a Lethe bot (``bridge.defer_to``)
is joined to the room belongs to that bot, but only while that bot can enforce at
least what the bridge would: it has the power to redact others' messages and the
room's state sets an active policy (the bot knows nothing of the bridge's default).
Otherwise, a member with no power could switch enforcement off by inviting the bot.
Every other message of an included room belongs to the bridge. The bot tracks only
what is sent after it joined, and the bridge stops tracking at that same join
event, so the two never share a message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.engine.model import Marker, Message, PolicyEvent, Receipt, RoomUpdate, TimelineItem
from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    POLICY_EVENT_TYPE,
    PolicyError,
    StatePolicy,
    resolve_policy,
)
from bot.matrix.events import to_item
from bot.matrix.roomstate import PowerSource, checked, state_policy
from bot.matrix.textmap import load_text_map
from bridge.config import BridgeConfig
from bridge.intake import clean_aliases, clean_create, clean_power_levels, shown, where

log = logging.getLogger(__name__)

_UNKNOWN = object()
OWNERS_META = "bridge_owners"  # meta key: room -> the Lethe bot that enforces it


def load_room_map(raw: str | None) -> dict[str, str]:
    """A stored room -> text map (the bot that owns each room, the m.room.retention the
    bridge wrote in each); a damaged value counts as none."""
    return load_text_map(raw)


@dataclass(frozen=True)
class BridgePower:
    """Whether the bridge can redact everything the room's policy makes due: local
    senders' events always (it acts as them); remote senders' events only through its
    own bot user, joined and with the permission to redact others' messages."""

    can_redact_others: bool
    bot_level: int | None  # None: unlimited (a room creator)
    redact_level: int
    remote_members: int


@dataclass
class RoomView:
    room_id: str
    loaded: bool = False  # this process has read the room's state (or seen its creation)
    state_tried: set[str] = field(default_factory=set)  # users it failed to read it as
    watched: bool = False  # included by bridge.rooms
    # Its power, from its create and power levels events as intake.py cleaned them.
    power_source: PowerSource = field(default_factory=PowerSource)
    aliases: tuple[str, ...] = ()
    remote_members: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)  # joined Lethe bots (bridge.defer_to)
    policies: dict[str, StatePolicy] = field(default_factory=dict)  # valid policy state
    bot_joined: bool = False
    recorded: BridgePower | None = None  # last given to the engine


@dataclass
class RoomReading:
    """One room's share of a transaction, read."""

    update: RoomUpdate | None = None
    invited_by: str | None = None  # a local user invited the bridge's bot
    power_inputs_changed: bool = False
    forget: bool = False  # not (or no longer) in bridge.rooms: drop what the engine has


def state_key(event: Mapping[str, Any]) -> tuple[str, str] | None:
    key = event.get("state_key")
    kind = event.get("type")
    return (kind, key) if isinstance(kind, str) and isinstance(key, str) else None


class RoomReader:
    """Reads events into room views, applying the bridge's room filter and ownership."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config

    def _checked(self, view: RoomView, item: TimelineItem | None) -> TimelineItem | None:
        """A policy event marked refused if its sender may not send both policy state
        events under the room's power levels at this point (the bot's rule too)."""
        if item is None:
            return None
        return checked(item, view.power_source.power)

    def observe(self, view: RoomView, event: Mapping[str, Any], reading: RoomReading, *,
                refused: bool = False) -> None:
        """Update ``view`` with a state event. Every field is read whatever its type:
        state comes from other servers too, where the homeserver checks less."""
        key = state_key(event)
        if key is None:
            return
        kind, skey = key
        content = event.get("content")
        content = content if isinstance(content, Mapping) else {}
        ok = True
        if kind == "m.room.create" and skey == "":
            view.power_source.create, ok = clean_create(event)
            reading.power_inputs_changed = True
        elif kind == "m.room.power_levels" and skey == "":
            view.power_source.levels, ok = clean_power_levels(event.get("content"))
            reading.power_inputs_changed = True
        elif kind == "m.room.canonical_alias" and skey == "":
            view.aliases, ok = clean_aliases(event.get("content"))
        elif kind == "m.room.member":
            self._member(view, skey, content.get("membership"), event, reading)
        elif kind in (POLICY_EVENT_TYPE, BEEPER_EVENT_TYPE) and skey == "" and not refused:
            self._policy(view, kind, event)
            reading.power_inputs_changed = True
        if not ok:
            log.warning("read %s %s in %s without its malformed parts", kind,
                        shown(event.get("event_id")), shown(view.room_id))

    def _member(
        self, view: RoomView, user_id: str, membership: object, event: Mapping[str, Any],
        reading: RoomReading,
    ) -> None:
        joined = membership == "join"
        if user_id == self.config.user_id:
            if membership == "invite":
                sender = event.get("sender")
                if isinstance(sender, str) and self.config.is_local(sender):
                    reading.invited_by = sender
            if view.bot_joined != joined:
                view.bot_joined = joined
                reading.power_inputs_changed = True
            return
        if self.config.defers_to(user_id):
            (view.owners.add if joined else view.owners.discard)(user_id)
        if not self.config.is_local(user_id):
            before = len(view.remote_members)
            (view.remote_members.add if joined else view.remote_members.discard)(user_id)
            reading.power_inputs_changed |= before != len(view.remote_members)

    def _policy(self, view: RoomView, kind: str, event: Mapping[str, Any]) -> None:
        """Remember the room's policy state, to know whether a Lethe bot there has a
        policy to enforce (an invalid event leaves the previous one, as in the engine;
        so does a redacted one: a redaction is not an "off")."""
        try:
            view.policies[kind] = state_policy(event, self.config.default_cap_ms)
        except PolicyError:
            return

    def deferred_to(self, view: RoomView) -> str | None:
        """The Lethe bot that owns messages sent now, if one can enforce the room: joined,
        with the power to redact others' messages, and a policy in the room's state."""
        state = resolve_policy(view.policies.get(POLICY_EVENT_TYPE),
                               view.policies.get(BEEPER_EVENT_TYPE))
        if not view.owners or state is None or not state.policy.active:
            return None
        return self.able_bot(view)

    def able_bot(self, view: RoomView) -> str | None:
        """A Lethe bot in the room that may redact others' messages, whatever the policy
        (it answers `!lethe expire` there, and may own messages' own timers)."""
        power = view.power_source.power
        able = sorted(bot for bot in view.owners if power.can_redact_others(bot))
        return able[0] if able else None

    def timers_owner(self, view: RoomView) -> str | None:
        """Who enforces messages' own timers where the bridge would track nothing (the
        policy it applies, the room's or its default, is off): an able Lethe bot in
        the room. Where the bridge applies a policy it keeps tracking them under it,
        shortened by their timer, so no timer lengthens its rule; a bot tracking the
        same message then sees the other's redaction and forgets it."""
        state = resolve_policy(view.policies.get(POLICY_EVENT_TYPE),
                               view.policies.get(BEEPER_EVENT_TYPE))
        policy = state.policy if state is not None else self.config.default_policy
        return None if policy.active else self.able_bot(view)

    def load(
        self,
        view: RoomView,
        state: Iterable[Mapping[str, Any]],
        events: Iterable[Mapping[str, Any]],
        *,
        complete: bool = True,
        known: bool = False,
    ) -> list[TimelineItem]:
        """First sight: the room's current state as the state block before the
        transaction's ``events``. State those events set themselves is left out, so a
        member who joins (or a policy set) in the middle of them counts from there on.
        Not ``complete`` (the state could not be read): it is tried again next time.
        ``known``: the engine has the room already (this is a restart), so its policy
        state gets the same power check as in the timeline; a new room's policy is
        taken as it stands, as the bot does when it joins."""
        later = {key for key in map(state_key, events) if key is not None}
        before = [event for event in state if state_key(event) not in later]
        ignored = RoomReading()
        items: list[TimelineItem] = []
        for event in before:
            try:
                self.observe(view, event, ignored)
                item = to_item(event, in_timeline=False)
            except Exception as exc:
                _skipped(event, view.room_id, exc)
                continue
            if item is not None:
                items.append(item)
        if known:  # checked against the state's power levels, now all read
            power = view.power_source.power
            items = [checked(item, power) for item in items]
            for item in items:
                if isinstance(item, PolicyEvent) and item.refused is not None:
                    view.policies.pop(item.event_type, None)
        view.loaded = complete
        view.watched = self.config.rooms.allows(view.room_id, view.aliases)
        return items

    def read(
        self,
        view: RoomView,
        initial: list[TimelineItem],
        events: Iterable[Mapping[str, Any]],
        receipts: Iterable[Receipt],
        *,
        first_sight: bool = False,
    ) -> RoomReading:
        reading = RoomReading(
            power_inputs_changed=first_sight, forget=first_sight and not view.watched
        )
        items: list[TimelineItem] = list(initial) if view.watched else []
        last_event_id: str | None = None
        owner: str | object | None = _UNKNOWN  # deferred_to(view), kept between state
        for event in events:
            try:
                item = self._checked(view, to_item(event))
                self.observe(view, event, reading, refused=isinstance(item, PolicyEvent)
                             and item.refused is not None)
            except Exception as exc:
                _skipped(event, view.room_id, exc)
                continue
            if state_key(event) is not None:
                owner = _UNKNOWN  # state may change who enforces: decide again
            allowed = self.config.rooms.allows(view.room_id, view.aliases)
            if allowed != view.watched:
                view.watched = allowed
                reading.forget = not allowed
                if allowed:
                    # Its members and policy are unknown: read its state again next time.
                    view.loaded = False
            if not view.watched:
                continue
            if item is None:
                continue
            event_id = event.get("event_id")
            last_event_id = event_id if isinstance(event_id, str) else last_event_id
            if isinstance(item, Message) and owner is _UNKNOWN:
                owner = self.deferred_to(view)
            if isinstance(item, Message) and (owner or (item.timer is not None
                                              and self.timers_owner(view))):
                # A Lethe bot that can enforce the room is in it: the message is the
                # bot's. Still a position receipts may point at.
                item = Marker(item.event_id)
            items.append(item)
        if not view.watched:
            return reading
        reading.update = RoomUpdate(view.room_id, tuple(items), tuple(receipts), last_event_id)
        return reading

    def bridge_power(self, view: RoomView) -> BridgePower:
        power = view.power_source.power
        bot = self.config.user_id
        level = power.level(bot)
        can = not view.remote_members or (view.bot_joined and power.can_redact_others(bot))
        return BridgePower(
            can, None if math.isinf(level) else int(level), power.redact,
            len(view.remote_members),
        )


def _skipped(event: Mapping[str, Any], room_id: str, exc: Exception) -> None:
    """One event the reader failed on (a shape nobody checked for): skipped on its own,
    so the rest of its transaction is still stored."""
    log.error("skipped event %s in %s: reading it raised %s", shown(event.get("event_id")),
              shown(room_id), where(exc))
