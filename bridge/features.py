"""The bridge's part of a visible timer: the timers a room accepts, published as
``com.beeper.room_features`` (bot/matrix/roomfeatures.py) after each change of its
policy, where the bridge's own bot is a member with the power to send it.

The bridge sends no notices, so it pins nothing, and it leaves the topic alone: it
enforces rooms without a presence their members see, and does not rewrite what they
see in the room. Where a Lethe bot enforces the room (``bridge.defer_to``), that bot
publishes, pins and keeps the topic instead.
"""

from __future__ import annotations

import logging

from bot.engine.engine import Engine
from bot.engine.model import PolicyChange
from bot.matrix.api import MatrixHttp
from bot.matrix.roomfeatures import (
    ROOM_FEATURES_TYPE,
    bounded_capability,
    publish_timers,
)
from bridge.config import BridgeConfig
from bridge.rooms import RoomReader, RoomView

log = logging.getLogger(__name__)


async def publish_features(config: BridgeConfig, engine: Engine, http: MatrixHttp,
                           reader: RoomReader, view: RoomView, change: PolicyChange) -> None:
    if not view.watched or not view.bot_joined or reader.deferred_to(view) is not None:
        return
    if not view.power_source.power.can_send_state(config.user_id, ROOM_FEATURES_TYPE):
        log.info("%s: not publishing %s: the bridge's bot may not send it", view.room_id,
                 ROOM_FEATURES_TYPE)
        return
    row = await engine.room(view.room_id)
    policy = row.policy if row is not None else change.policy
    problem = await publish_timers(http, view.room_id, bounded_capability(
        config.bounds.for_room(view.room_id), policy))
    if problem is not None:
        log.warning("%s: could not publish %s: %s", view.room_id, ROOM_FEATURES_TYPE, problem)
