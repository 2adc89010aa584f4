"""Defaults, so that nobody has to remember: the bot's side.

A person sets their own defaults for new chats in a direct chat with the bot
(``!lethe default ...``, bot/front/commands.py); they are kept in the bot's account
data (bot/matrix/defaults.py). When the bot joins a room whose state holds no policy,
it puts one in force: the default of whoever invited it (if they may change the
policy there), else of the room's creator, else the server's ``policy.on_join``;
direct chats (the invite's ``is_direct``) and groups each by their own default. It
writes the room's state as the ``!lethe after-send`` command does, and announces it.
Without the power to write state it says so in the room and in ``!lethe status``,
and does nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.front import texts
from bot.front.commands import DefaultCommand
from bot.front.defaultcommands import default_reply
from bot.front.reader import CommandRequest, Invite
from bot.matrix.defaults import (
    DefaultsUnavailable,
    RoomKind,
    UserDefaults,
    choose_default,
    read_defaults,
    state_has_policy,
)
from bot.matrix.policy_state import missing_policy_power

if TYPE_CHECKING:
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)

NOTE_KEY = "default_note."  # meta, + room id: why the default on join was not put in force
_INVITES_KEPT = 1000


class BotDefaults:
    def __init__(self, bot: LetheBot) -> None:
        self._bot = bot
        # room -> the invite the bot joined it on (who, and whether a direct chat),
        # until the first sync of the room has been seen.
        self._invites: dict[str, Invite] = {}

    def joined(self, invite: Invite) -> None:
        self._invites[invite.room_id] = invite
        while len(self._invites) > _INVITES_KEPT:
            del self._invites[next(iter(self._invites))]

    # --- the commands ---------------------------------------------------------------

    async def command(self, request: CommandRequest, command: DefaultCommand) -> None:
        """``!lethe default ...``: only in a direct chat with the bot, where nobody else
        reads the answer (and nobody else's command could be taken for the sender's)."""
        bot = self._bot
        assert bot.http is not None
        text = await default_reply(
            bot.http, bot.config.bot.user_id, request.room_id, request.sender, command,
            on_join=bot.config.on_join, prefix=bot.config.command_prefix,
            applies_to=texts.APPLIES_TO_BOT, bounds=bot.config.bounds.default)
        await bot.actions.notice(request.room_id, text)

    # --- on join ----------------------------------------------------------------------

    async def on_join(self, room_id: str) -> None:
        """The bot has just met ``room_id`` (its first sync there, stored): put a
        default in force if the room's state holds no policy."""
        bot = self._bot
        assert bot.engine is not None and bot.http is not None
        invite = self._invites.pop(room_id, None)
        row = await bot.engine.room(room_id)
        if row is None or row.lethe_state is not None or row.beeper_state is not None:
            return  # the room's state says: it wins over every default
        kind = RoomKind.DM if invite is not None and invite.is_direct else RoomKind.GROUP
        try:
            chosen = choose_default(kind, await self._people(room_id, invite, kind),
                                    bot.config.on_join)
        except DefaultsUnavailable as exc:
            log.warning("no default put in force in %s: %s", room_id, exc)
            await bot.engine.set_meta(NOTE_KEY + room_id, texts.DEFAULTS_UNREADABLE_ON_JOIN)
            await bot.actions.notice(room_id, texts.DEFAULTS_UNREADABLE_ON_JOIN)
            return
        if chosen is None or chosen.policy is None:
            return
        me = bot.config.bot.user_id
        missing = missing_policy_power(bot.power(room_id), me)
        if missing is not None:
            note = texts.default_not_applied(chosen, missing.needed)
            log.info("cannot put the default in force in %s: no power to write state",
                     room_id)
            await bot.engine.set_meta(NOTE_KEY + room_id, note)
            await bot.actions.notice(room_id, note)
            return
        if await state_has_policy(bot.http, room_id):
            log.info("%s: a policy was set meanwhile; no default", room_id)
            return
        # Never state outside the operator's bounds: a room's own may be stricter.
        policy = bot.config.bounds.for_room(room_id).clamp(chosen.policy)
        chosen = replace(chosen, policy=policy)
        if await bot.actions.put_policy(room_id, policy, texts.default_applied(chosen)):
            await bot.engine.set_meta(NOTE_KEY + room_id, "")
            log.info("put the %s default of %s in force in %s", chosen.kind.value,
                     chosen.user_id or "the server (policy.on_join)", room_id)

    async def _people(self, room_id: str, invite: Invite | None,
                      kind: RoomKind) -> list[tuple[str, UserDefaults]]:
        """Whose defaults count, in order: the inviter (if they may change the policy
        here: no one imposes a rule on a room they could not set it in), the creator.
        Read until one has a default of ``kind``."""
        bot = self._bot
        assert bot.http is not None
        power = bot.power(room_id)
        candidates = []
        if invite is not None and invite.inviter is not None \
                and missing_policy_power(power, invite.inviter) is None:
            candidates.append(invite.inviter)
        create = bot.reader.power_sources.get(room_id)
        creator = create.create.get("sender") if create and create.create else None
        if isinstance(creator, str) and creator not in candidates:
            candidates.append(creator)
        me = bot.config.bot.user_id
        people: list[tuple[str, UserDefaults]] = []
        for user in candidates:
            if user != me:
                people.append((user, await read_defaults(bot.http, me, user)))
                if people[-1][1].get(kind) is not None:
                    break
        return people

    async def status_note(self, room_id: str) -> str | None:
        """Why the default was not put in force here, while the room still has none."""
        engine = self._bot.engine
        assert engine is not None
        note = await engine.get_meta(NOTE_KEY + room_id)
        row = await engine.room(room_id)
        if not note or row is None or row.lethe_state or row.beeper_state:
            return None
        return note

