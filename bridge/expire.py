"""``!lethe expire DUR`` in the bridge: a reply by a local user, in a room the bridge
enforces, gives the message replied to (its edits and reactions, and the command) a
deadline of its own, never later than the one it has; as the bot does
(bot/front/expire.py), with the same rules (bot/matrix/expiry.py).

Applied silently: the bridge's bot is not a member of the rooms it enforces, so it
has no voice there; what it did (or refused) is logged, ids only. The bridge reads
only what it can see: in encrypted rooms the command is ciphertext to it, and a Lethe
bot in the room answers it instead. Where an able Lethe bot is in the room the bridge
leaves the command to that bot, so no message is redacted by both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from bot.engine.engine import Engine
from bot.front.commands import CommandError, Expire, is_command, parse_command
from bot.matrix.api import MatrixHttp
from bot.matrix.expiry import (
    Refusal,
    Target,
    expire_with_followers,
    find_target,
    may_expire,
    reply_target,
)
from bridge.config import BridgeConfig
from bridge.rooms import RoomReader, RoomView

log = logging.getLogger(__name__)


async def expire_commands(engine: Engine, http: MatrixHttp, config: BridgeConfig,
                          reader: RoomReader, view: RoomView,
                          events: Iterable[Mapping[str, Any]]) -> None:
    """After the transaction carrying ``events`` is stored: apply its expire commands."""
    if not view.watched or reader.able_bot(view) is not None:
        return
    for event in events:
        content = event.get("content")
        sender = event.get("sender")
        if (event.get("type") != "m.room.message" or "state_key" in event
                or not isinstance(content, Mapping) or not isinstance(sender, str)
                or not config.is_local(sender)):
            continue
        body = content.get("body")
        if not isinstance(body, str) or not is_command(body, config.command_prefix):
            continue
        try:
            command = parse_command(body, config.command_prefix, config.default_cap_ms)
        except CommandError:
            continue  # the others are the bot's, where there is one
        if isinstance(command, Expire):
            await _expire(engine, http, config, view, event, sender, reply_target(content), command)


async def _expire(engine: Engine, http: MatrixHttp, config: BridgeConfig, view: RoomView,
                  event: Mapping[str, Any], sender: str, reply_to: str | None,
                  command: Expire) -> None:
    room_id, event_id, ts = view.room_id, event["event_id"], event["origin_server_ts"]
    # Asked as the command's sender (a local member of the room, in the bridge's
    # namespace): the bridge's own bot is not a member.
    target = (Refusal.NO_REPLY if reply_to is None
              else await find_target(http, room_id, reply_to, user_id=sender))
    if not isinstance(target, Refusal) and not may_expire(
            view.power_source.power, sender, target.sender):
        target = Refusal.NOT_YOURS
    if isinstance(target, Refusal):
        log.info("expire %s in %s by %s refused: %s", event_id, room_id, sender, target.value)
        return
    bound = config.bounds.for_room(room_id).check_own_timer(command.duration_ms)
    if bound is not None:
        log.info("expire %s in %s by %s refused: %s", event_id, room_id, sender, bound)
        return
    due = ts + command.duration_ms
    result = await expire_with_followers(engine, http, room_id, target,
                                         Target(event_id, sender, ts), due, user_id=sender)
    log.info("expire of %s in %s by %s: %s", target.event_id, room_id, sender, result.value)
