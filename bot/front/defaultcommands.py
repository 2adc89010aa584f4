"""``!lethe default ...`` carried out, for the bot and the bridge's bot alike: only in a
direct chat (the sender and the bot, nobody else joined), the stored defaults read,
changed and written back whole (bot/matrix/defaults.py). Nio-free: the bridge uses it."""

from __future__ import annotations

import logging

from bot.engine.bounds import Bounds
from bot.engine.policy import Policy
from bot.front import texts
from bot.front.commands import ClearDefault, DefaultCommand, SetDefault, ShowDefault
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.defaults import DefaultsUnavailable, read_defaults, write_defaults

log = logging.getLogger(__name__)


async def in_direct_chat(http: MatrixHttp, room_id: str, sender: str, me: str) -> bool:
    """Whether only ``sender`` and ``me`` are joined to the room (asked, not guessed)."""
    try:
        reply = await http.joined_members(room_id)
    except HomeserverUnavailable:
        return False
    joined = reply.body.get("joined") if reply.ok else None
    return isinstance(joined, dict) and set(joined) == {sender, me}


async def default_reply(http: MatrixHttp, me: str, room_id: str, sender: str,
                        command: DefaultCommand, *, on_join: Policy | None, prefix: str,
                        applies_to: str, bounds: Bounds) -> str:
    """Carry out ``command`` of ``sender`` in ``room_id``; the text to answer with.
    A default outside the operator's ``bounds`` is refused, naming the bound."""
    if not await in_direct_chat(http, room_id, sender, me):
        return texts.default_needs_direct_chat(sender)
    if isinstance(command, SetDefault):
        outside = bounds.check(command.policy)
        if outside is not None:
            return texts.outside_bounds(sender, outside)
    try:
        current = await read_defaults(http, me, sender)
        if isinstance(command, ShowDefault):
            return texts.defaults_shown(current, on_join, prefix, applies_to)
        if isinstance(command, SetDefault):
            updated = current.with_default(command.kind, command.policy)
        else:
            assert isinstance(command, ClearDefault)
            updated = current
            for kind in command.kinds:
                updated = updated.with_default(kind, None)
        await write_defaults(http, me, sender, updated)
    except DefaultsUnavailable as exc:
        log.warning("%s", exc)
        return texts.DEFAULTS_UNAVAILABLE
    log.info("stored the defaults of %s (%s)", sender, type(command).__name__)
    return texts.defaults_changed(updated, current.problems)
