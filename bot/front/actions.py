"""The action worker: the follow-up work of each stored sync (joins, notices, power
checks, leaving an empty room, commands), one at a time, after the sync that asked
for it is committed.

It owns the bot's side of a room's conversation: every text it sends comes from
bot/front/texts.py, through ``notice``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from nio import (
    JoinError,
    LocalProtocolError,
    OlmUnverifiedDeviceError,
    RoomSendResponse,
    SendRetryError,
)

from bot.engine.givenup import GivenUpRoom
from bot.engine.policy import Policy
from bot.front import texts
from bot.front.commands import (
    CommandError,
    DefaultCommand,
    Expire,
    Help,
    SetMirror,
    Status,
    parse_command,
)
from bot.front.expire import run_expire
from bot.front.joins import META_KEY as JOINS_META
from bot.front.pinning import PinsChanged, ShowPolicy, Visibility
from bot.front.policyactions import Defaults, PolicyChanged, PolicyConversation
from bot.front.reader import CommandRequest, Invite, inviter_allowed
from bot.front.throttle import ReplyThrottle
from bot.matrix.api import HomeserverUnavailable
from bot.matrix.policy_state import (
    missing_policy_power,
)

if TYPE_CHECKING:
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    room_id: str
    text: str


@dataclass(frozen=True)
class CheckPower:
    room_id: str
    announce: bool


@dataclass(frozen=True)
class LeaveIfAlone:
    room_id: str


Action = (Invite | Notice | CheckPower | LeaveIfAlone | PolicyChanged | CommandRequest
          | Defaults | ShowPolicy | PinsChanged)


class ActionWorker(PolicyConversation):
    def __init__(self, bot: LetheBot) -> None:
        self._bot = bot
        self._queue: asyncio.Queue[Action] = asyncio.Queue()
        self._throttle = ReplyThrottle()
        # Per room, whether the bot may redact others' messages, as last announced.
        self._can_redact_others: dict[str, bool] = {}
        self._join_timers: dict[str, asyncio.Task[None]] = {}  # room -> its next try
        self.visible = Visibility(bot)  # the pinned notice, room_features, topic

    def put(self, action: Action) -> None:
        self._queue.put_nowait(action)

    def forget(self, room_id: str) -> None:
        self._can_redact_others.pop(room_id, None)

    async def run(self) -> None:
        while True:
            action = await self._queue.get()
            try:
                await self._act(action)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("action %s failed", type(action).__name__)

    async def _act(self, action: Action) -> None:
        if isinstance(action, Invite):
            await self._join(action)
        elif isinstance(action, Notice):
            await self.notice(action.room_id, action.text)
        elif isinstance(action, CheckPower):
            await self._check_power(action.room_id, action.announce)
        elif isinstance(action, LeaveIfAlone):
            await self._leave_if_alone(action.room_id)
        elif isinstance(action, PolicyChanged):
            await self._policy_changed(action)
        elif isinstance(action, Defaults):
            await self._bot.defaults.on_join(action.room_id)
        elif isinstance(action, ShowPolicy | PinsChanged):
            await self.visible.act(action)
        else:
            await self._command(action)

    # --- joins ---------------------------------------------------------------

    async def _join(self, invite: Invite) -> None:
        bot = self._bot
        assert bot.client is not None
        if not inviter_allowed(invite.inviter, bot.config.invites_allow):
            log.warning("refusing invite to %s from %s (not in invites.allow)",
                        invite.room_id, invite.inviter)
            await bot.client.room_leave(invite.room_id)
            return
        try:
            resp = await bot.client.join(invite.room_id)
            error = resp.message if isinstance(resp, JoinError) else None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = type(exc).__name__
        if error is None:
            log.info("joined %s on the invite of %s", invite.room_id, invite.inviter)
            bot.defaults.joined(invite)
            if bot.joins.done(invite.room_id):
                await self.save_joins()
            return
        delay = bot.joins.failed(invite.room_id, invite.inviter, str(error),
                                 int(time.time() * 1000))
        await self.save_joins()
        if delay is None:
            log.warning("gave up joining %s on the invite of %s: %s", invite.room_id,
                        invite.inviter, error)
            return
        if invite.room_id in self._join_timers:
            return  # a try is already scheduled (the invite came twice): one chain only
        log.warning("could not join %s (%s); trying again in %.0f s", invite.room_id,
                    error, delay)
        self._join_timers[invite.room_id] = bot.life.own(
            self._join_later(invite, delay), name="lethe-join-retry")

    async def _join_later(self, invite: Invite, delay: float) -> None:
        await asyncio.sleep(delay)
        self._join_timers.pop(invite.room_id, None)
        self.put(invite)

    async def save_joins(self) -> None:
        engine = self._bot.engine
        assert engine is not None
        await engine.set_meta(JOINS_META, self._bot.joins.to_json())

    async def _leave_if_alone(self, room_id: str) -> None:
        bot = self._bot
        assert bot.client is not None and bot.engine is not None
        room = bot.client.rooms.get(room_id)
        if room is None or room.joined_count > 1:
            return
        log.info("leaving %s: the bot is its last member", room_id)
        await bot.client.room_leave(room_id)
        log_given_up(await bot.engine.forget_room(room_id))

    # --- notices and power -----------------------------------------------------

    async def notice(self, room_id: str, text: str) -> str | None:
        """Send an m.notice (encrypted where the room is); returns its event id."""
        client, trust = self._bot.client, self._bot.trust
        assert client is not None and trust is not None
        try:
            room = client.rooms.get(room_id)
            await trust.prepare(client, room.users if room is not None else ())
            resp = await client.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.notice", "body": text},
                ignore_unverified_devices=trust.share_with_unverified,
            )
        except HomeserverUnavailable as exc:
            log.warning("not sending a notice to %s: %s", room_id, exc)
            return None
        except OlmUnverifiedDeviceError as exc:
            log.warning("not sending a notice to %s: unverified device %s (e2ee.trust is "
                        "'verified')", room_id, exc.device.id)
            return None
        except (TimeoutError, LocalProtocolError, SendRetryError, aiohttp.ClientError,
                OSError) as exc:
            log.warning("could not send a notice to %s: %s", room_id, type(exc).__name__)
            return None
        if isinstance(resp, RoomSendResponse):
            return str(resp.event_id)
        log.warning("could not send a notice to %s: %s", room_id, getattr(resp, "message", ""))
        return None

    async def _check_power(self, room_id: str, announce: bool) -> None:
        bot = self._bot
        assert bot.engine is not None
        if not bot.reader.knows(room_id):
            return  # not a room we are in (any more)
        power = bot.power(room_id)
        me = bot.config.bot.user_id
        can = power.can_redact_others(me)
        level = power.level(me)
        # Compared with what the database says, so a restart does not repeat notices.
        changed = await bot.engine.set_power(
            room_id, can, None if level == float("inf") else int(level), power.redact
        )
        self._can_redact_others[room_id] = can
        if not changed:
            return
        if not can:
            await self.notice(room_id, texts.cannot_redact_others(power, me))
        elif announce:
            await self.notice(room_id, texts.CAN_REDACT_OTHERS_AGAIN)

    async def on_park(self, room_id: str, reason: str) -> None:
        """The engine found it may not redact others' messages in ``room_id``."""
        if self._can_redact_others.get(room_id, True):
            self._can_redact_others[room_id] = False
            power = self._bot.power(room_id)
            self.put(Notice(room_id, texts.cannot_redact_others(power,
                                                                self._bot.config.bot.user_id)))

    # --- commands ----------------------------------------------------------------

    async def _command(self, request: CommandRequest) -> None:
        bot = self._bot
        assert bot.engine is not None
        # A flood of commands must not become a flood of notices, each redacted later
        # under the rate limit the members' messages need. Members who may change the
        # policy can flood the room with state anyway: only the others are throttled.
        trusted = missing_policy_power(bot.power(request.room_id), request.sender) is None
        if not trusted and not self._throttle.allow(request.room_id, request.sender):
            log.debug("ignoring command %s of %s in %s: too many replies (throttled)",
                      request.event_id, request.sender, request.room_id)
            return
        prefix = bot.config.command_prefix
        try:
            command = parse_command(request.body, prefix, bot.config.default_cap_ms)
        except CommandError as exc:
            await self.notice(request.room_id, texts.command_error(request.sender, exc))
            return
        if isinstance(command, Expire):
            await run_expire(bot, self, request, command)
        elif isinstance(command, DefaultCommand):
            await bot.defaults.command(request, command)
        elif isinstance(command, Help):
            await self.notice(request.room_id, texts.usage(prefix))
        elif isinstance(command, Status):
            await self._status(request.room_id)
        else:
            row = await bot.engine.room(request.room_id)
            current = row.policy if row is not None else Policy.off()
            if isinstance(command, SetMirror):
                await self._set_policy(request, current.mirrored(command.on))
            else:
                await self._set_policy(request, command.policy.mirrored(
                    current.mirror_retention if command.mirror is None else command.mirror))


def log_given_up(given_up: GivenUpRoom | None) -> None:
    """Out of a room the bot can redact nothing: what was still scheduled there stays
    (unless a bridge on its senders' server, or a moderator, redacts it). Said loudly,
    and kept for `lethe rooms list`."""
    if given_up is None:
        return
    log.warning("gave up %d scheduled redaction(s) in %s (the bot is no longer in it; the "
                "earliest was due %s): those messages stay unless a bridge on their "
                "senders' server or a moderator redacts them", given_up.given_up,
                given_up.room_id, "-" if given_up.next_due_ms is None
                else time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                   time.gmtime(given_up.next_due_ms / 1000)))
