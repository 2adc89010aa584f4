"""The ``notices`` section: how the bot makes a room's rule visible beyond its notices
(bot/front/pinning.py): pinning the policy notice, publishing the accepted timers
as ``com.beeper.room_features``, and (off by default) the rule in the topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import ConfigReader


@dataclass(frozen=True)
class NoticesConfig:
    pin: bool = True  # pin the current policy notice (m.room.pinned_events)
    room_features: bool = True  # publish the accepted timers (com.beeper.room_features)
    topic: bool = False  # add the rule to the room's topic, as a marked suffix


def read_notices(r: ConfigReader) -> NoticesConfig:
    section = r.section("notices")
    values: dict[str, bool] = {}
    for key, default in (("pin", True), ("room_features", True), ("topic", False)):
        value = section.get(key, default)
        if not isinstance(value, bool):
            raise r.fail(f"notices.{key}", f"must be true or false, not {value!r}")
        values[key] = value
    return NoticesConfig(**values)
