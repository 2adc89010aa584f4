"""``!lethe expire DUR`` in the bot: sent as a reply, it gives the message replied to
(and what follows it: its edits, reactions) a deadline of its own, the command's time
plus DUR, only ever earlier than the one it has. The command and the bot's answer go
at the same time. Works in rooms whose policy is off: the target is then tracked from
now on with that deadline alone. Who may: bot/matrix/expiry.py."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.front import texts
from bot.front.commands import Expire
from bot.front.reader import CommandRequest
from bot.matrix.expiry import Refusal, Target, expire_with_followers, find_target, may_expire

if TYPE_CHECKING:
    from bot.front.actions import ActionWorker
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)


async def run_expire(bot: LetheBot, worker: ActionWorker, request: CommandRequest,
                     command: Expire) -> None:
    assert bot.engine is not None and bot.http is not None
    room_id, prefix = request.room_id, bot.config.command_prefix
    if request.reply_to is None:
        await worker.notice(room_id, texts.expire_refused(request.sender, Refusal.NO_REPLY,
                                                          prefix))
        return
    target = await find_target(bot.http, room_id, request.reply_to)
    if isinstance(target, Refusal):
        await worker.notice(room_id, texts.expire_refused(request.sender, target, prefix))
        return
    if not may_expire(bot.power(room_id), request.sender, target.sender):
        log.info("refused expire of %s in %s by %s (not theirs, no moderator)",
                 target.event_id, room_id, request.sender)
        await worker.notice(room_id, texts.expire_refused(request.sender, Refusal.NOT_YOURS,
                                                          prefix))
        return
    bound = bot.config.bounds.for_room(room_id).check_own_timer(command.duration_ms)
    if bound is not None:
        await worker.notice(room_id, texts.outside_bounds(request.sender, bound))
        return
    due = request.origin_ts + command.duration_ms
    result = await expire_with_followers(
        bot.engine, bot.http, room_id, target,
        Target(request.event_id, request.sender, request.origin_ts), due)
    log.info("expire of %s in %s by %s: %s", target.event_id, room_id, request.sender,
             result.value)
    answer = await worker.notice(room_id, texts.expire_done(request.sender, result, due))
    if answer is not None:
        await bot.engine.expire_event(room_id, answer, max(due, bot.engine.now_ms()),
                                      untracked=(bot.config.bot.user_id,
                                                 bot.engine.now_ms()))


