"""After a transaction is stored: what the bridge does about each room. It records
whether it may redact others' messages there (its bot's power, for remote senders),
which Lethe bot enforces the room instead, accepts its bot's invites, and forgets
rooms that left ``bridge.rooms``."""

from __future__ import annotations

import json
import logging

from bot.engine.engine import Engine
from bot.engine.power import describe_level
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bridge.config import BridgeConfig
from bridge.rooms import OWNERS_META, RoomReader, RoomReading, RoomView
from bridge.transaction import BridgeStats

log = logging.getLogger(__name__)


class FollowUp:
    def __init__(self, config: BridgeConfig, engine: Engine, http: MatrixHttp,
                 reader: RoomReader, stats: BridgeStats, owners: dict[str, str]) -> None:
        self._config = config
        self._engine = engine
        self._http = http
        self._reader = reader
        self._stats = stats
        self._owners = owners  # room -> the Lethe bot that enforces it

    async def follow_up(self, view: RoomView, reading: RoomReading) -> None:
        """After the commit: forget rooms that left bridge.rooms, record power, accept
        invites of the bridge's bot."""
        if reading.forget:
            await self._engine.forget_room(view.room_id)
            view.recorded = None
            self._stats.cannot_redact_others.discard(view.room_id)
        if not view.watched:
            return
        if reading.power_inputs_changed:
            await self._record_power(view)
        if reading.invited_by is not None:
            await self._join(view.room_id, reading.invited_by)

    async def _record_owner(self, view: RoomView) -> None:
        """Which Lethe bot enforces the room now, if any, for `lethe bridge rooms`."""
        owner = self._reader.deferred_to(view)
        if self._owners.get(view.room_id) == owner:
            return
        if owner is None:
            self._owners.pop(view.room_id, None)
        else:
            self._owners[view.room_id] = owner
        log.info("%s is enforced by %s", view.room_id, owner or "the bridge")
        await self._engine.set_meta(OWNERS_META, json.dumps(self._owners))

    async def _record_power(self, view: RoomView) -> None:
        await self._record_owner(view)
        power = self._reader.bridge_power(view)
        if power == view.recorded:
            return
        view.recorded = power
        await self._engine.set_power(view.room_id, power.can_redact_others,
                                     power.bot_level, power.redact_level)
        cannot = self._stats.cannot_redact_others
        if power.can_redact_others:
            if view.room_id in cannot:
                cannot.discard(view.room_id)
                log.info("%s: the bridge can redact every message there again", view.room_id)
            return
        if view.room_id not in cannot:
            cannot.add(view.room_id)
            level = "none" if not view.bot_joined else describe_level(
                power.bot_level if power.bot_level is not None else float("inf"))
            log.warning(
                "%s is not enforceable for its %d member(s) on other servers: the bridge's "
                "bot %s is %s with power level %s, redacting needs %d. Invite it and give it "
                "power level %d; until then their expired messages stay, kept scheduled.",
                view.room_id, power.remote_members, self._config.user_id,
                "joined" if view.bot_joined else "not joined", level,
                power.redact_level, power.redact_level)

    async def _join(self, room_id: str, inviter: str) -> None:
        try:
            reply = await self._http.join(room_id)
        except HomeserverUnavailable as exc:
            log.warning("could not join %s on the invite of %s: %s", room_id, inviter, exc)
            return
        if reply.ok:
            log.info("the bridge's bot joined %s on the invite of %s", room_id, inviter)
        else:
            log.warning("could not join %s on the invite of %s: %s", room_id, inviter,
                        reply.errcode or reply.status)
