"""How the bridge redacts: a local sender's event as that sender (appservice
masquerading, no power needed), a remote sender's as the bridge's own bot."""

from __future__ import annotations

from collections.abc import Callable

from bot.engine.redactor import Outcome, Reply
from bot.matrix.api import MatrixHttp
from bot.matrix.transport import HttpTransport


class BridgeTransport:
    """A local sender who has left the room may not redact any more: then the bridge's
    bot tries, which works where it may redact others' messages."""

    def __init__(self, http: MatrixHttp, is_local: Callable[[str], bool]) -> None:
        self._is_local = is_local
        self._as_sender = HttpTransport(http, as_user=lambda s: s if is_local(s) else None)
        self._as_bot = HttpTransport(http)

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        reply = await self._as_sender.redact(room_id, event_id, sender, txn_id)
        if reply.outcome is Outcome.FORBIDDEN and self._is_local(sender):
            return await self._as_bot.redact(room_id, event_id, sender, txn_id)
        return reply

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        reply = await self._as_sender.check(room_id, event_id, sender)
        if reply.outcome is Outcome.FORBIDDEN and self._is_local(sender):
            return await self._as_bot.check(room_id, event_id, sender)
        return reply
