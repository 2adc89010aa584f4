"""A person's own defaults for new chats, the bridge's side (bot/matrix/defaults.py).

People set them in a direct chat with the bridge's own bot (``!lethe default ...``,
unencrypted: the appservice has no E2EE); it answers with an ``m.notice`` and keeps
them in its account data. The bridge sees every room created on its server without
an invite: when a local user creates one, it waits a moment for the creation's
invites (``SETTLE_S``), then reads the room's state as that user and, if the state
holds no policy, writes the user's default for direct chats (an invite with
``is_direct``) or for groups into it, as that user. It leaves alone rooms outside
``bridge.rooms``, rooms a Lethe bot (``bridge.defer_to``) is invited to or joined
(that bot puts its own defaults in force), and upgrades of existing rooms.

One owned worker does it all, in the order the homeserver pushed it; a failure is
logged and never ends the bridge. Message bodies are read only to parse a command,
never logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.engine.policy import POLICY_STATE_TYPES
from bot.front import texts
from bot.front.commands import CommandError, DefaultCommand, Help, is_command, parse_command
from bot.front.defaultcommands import default_reply, in_direct_chat
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.defaults import (
    DefaultsUnavailable,
    RoomKind,
    choose_default,
    kind_of_invite,
    read_defaults,
)
from bot.matrix.policy_state import PolicyWriteFailed, missing_policy_power, write_policy
from bot.matrix.roomstate import PowerSource
from bridge.config import BridgeConfig
from bridge.intake import clean_aliases, shown

log = logging.getLogger(__name__)

SETTLE_S = 2.0  # after a room's creation: its invites (is_direct) arrive meanwhile
COMMAND_MAX_AGE_MS = 10 * 60 * 1000  # older commands (pushed after an outage) are not run


@dataclass(frozen=True)
class _Created:
    room_id: str
    creator: str
    due: float  # loop time


@dataclass(frozen=True)
class _Command:
    room_id: str
    sender: str
    body: str = field(repr=False)  # plaintext: never logged, never stored


class BridgeDefaults:
    def __init__(self, config: BridgeConfig, http: MatrixHttp) -> None:
        self._config = config
        self._http = http
        self._queue: asyncio.Queue[_Created | _Command] = asyncio.Queue()

    def observe(self, bot_joined: bool, events: list[Mapping[str, Any]]) -> None:
        """A stored transaction's events of one room: rooms created by local users, and
        commands to the bridge's bot (where it is joined)."""
        config, now_ms = self._config, int(time.time() * 1000)
        for event in events:
            sender, kind = event.get("sender"), event.get("type")
            if not isinstance(sender, str) or not config.is_local(sender) \
                    or sender == config.user_id or config.defers_to(sender):
                continue
            if kind == "m.room.create" and event.get("state_key") == "":
                due = asyncio.get_running_loop().time() + SETTLE_S
                self._queue.put_nowait(_Created(event["room_id"], sender, due))
            elif kind == "m.room.message" and bot_joined and "state_key" not in event:
                body = (event.get("content") or {}).get("body")
                ts = event.get("origin_server_ts", 0)
                if isinstance(body, str) and is_command(body, config.command_prefix) \
                        and now_ms - ts <= COMMAND_MAX_AGE_MS:
                    self._queue.put_nowait(_Command(event["room_id"], sender, body))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Created):
                    await asyncio.sleep(max(0.0, item.due - loop.time()))
                    await self._new_room(item.room_id, item.creator)
                else:
                    await self._command(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("defaults: %s in %s failed", type(item).__name__,
                              shown(item.room_id))

    # --- new rooms --------------------------------------------------------------------

    async def _new_room(self, room_id: str, creator: str) -> None:
        config = self._config
        try:
            reply = await self._http.full_state(room_id, user_id=creator)
        except HomeserverUnavailable as exc:
            log.warning("no default for the new room %s: %s", room_id, exc)
            return
        chunk = reply.body.get("chunk") if reply.ok else None
        if not isinstance(chunk, list):
            log.info("no default for the new room %s: its state cannot be read as its "
                     "creator (%s)", room_id, reply.errcode or reply.status)
            return
        state = [e for e in chunk if isinstance(e, Mapping)]
        if any(e.get("type") in POLICY_STATE_TYPES and e.get("state_key") == ""
               for e in state):
            return  # the room's own state sets the policy: it wins
        aliases: tuple[str, ...] = ()
        members: list[Mapping[str, Any]] = []
        for event in state:
            content = event.get("content")
            if event.get("type") == "m.room.canonical_alias":
                aliases, _ = clean_aliases(content)
            elif event.get("type") == "m.room.member":
                members.append(event)
            elif event.get("type") == "m.room.create" and isinstance(content, Mapping) \
                    and content.get("predecessor") is not None:
                return  # an upgrade continues an existing room: not a new chat
        if not config.rooms.allows(room_id, aliases):
            return
        if any(isinstance(m.get("state_key"), str) and config.defers_to(m["state_key"])
               and _membership(m) in ("invite", "join") for m in members):
            log.info("%s: a Lethe bot is there; it puts the defaults in force", room_id)
            return
        direct = any(m.get("sender") == creator and _membership(m) == "invite"
                     and kind_of_invite(m.get("content")) is RoomKind.DM for m in members)
        kind = RoomKind.DM if direct else RoomKind.GROUP
        try:
            defaults = await read_defaults(self._http, config.user_id, creator)
        except DefaultsUnavailable as exc:
            log.warning("no default for the new room %s: %s", room_id, exc)
            return
        chosen = choose_default(kind, [(creator, defaults)], None)
        if chosen is None or chosen.policy is None:
            return
        if missing_policy_power(PowerSource.of(state).power, creator) is not None:
            log.warning("%s: %s may not change its policy; their default is not put in force",
                        room_id, creator)
            return
        try:
            # Never state outside the operator's bounds: a room's own may be stricter.
            await write_policy(self._http, room_id,
                               config.bounds.for_room(room_id).clamp(chosen.policy),
                               user_id=creator)
        except PolicyWriteFailed as exc:
            log.warning("%s: could not put the default of %s in force: %s", room_id,
                        creator, exc)
            return
        log.info("%s: put the %s default of %s in force (%s)", room_id, kind.value, creator,
                 chosen.policy.mode.value)

    # --- commands to the bridge's bot ---------------------------------------------------

    async def _command(self, item: _Command) -> None:
        """A ``default`` command is answered anywhere (refused outside a direct chat);
        anything else only in a direct chat with the bridge's bot: in a group it is
        another bot's command (a Lethe bot's), not the bridge's to answer."""
        config = self._config
        prefix = config.command_prefix
        try:
            command: object = parse_command(item.body, prefix, config.default_cap_ms)
        except CommandError as exc:
            command = exc
        if isinstance(command, DefaultCommand):
            await self._notice(item.room_id, await default_reply(
                self._http, config.user_id, item.room_id, item.sender, command,
                on_join=None, prefix=prefix, applies_to=texts.APPLIES_TO_BRIDGE,
                bounds=config.bounds.default))
            return
        if not await in_direct_chat(self._http, item.room_id, item.sender, config.user_id):
            return
        if isinstance(command, CommandError):
            text = texts.command_error(item.sender, command)
        elif isinstance(command, Help):
            text = texts.bridge_usage(prefix)
        else:
            text = texts.bridge_only_defaults(item.sender, prefix)
        await self._notice(item.room_id, text)

    async def _notice(self, room_id: str, text: str) -> None:
        try:
            reply = await self._http.send_message(
                room_id, f"lethe.{secrets.token_hex(8)}", {"msgtype": "m.notice", "body": text})
        except HomeserverUnavailable as exc:
            log.warning("could not answer in %s: %s", room_id, exc)
            return
        if not reply.ok:
            log.warning("could not answer in %s: %s", room_id, reply.errcode or reply.status)


def _membership(member: Mapping[str, Any]) -> object:
    content = member.get("content")
    return content.get("membership") if isinstance(content, Mapping) else None
