"""How the bridge redacts: a local sender's event as that sender (appservice
masquerading, no power needed), a remote sender's as the bridge's own bot. Delayed
redactions (bot/engine/delayed.py) likewise: scheduled as the local sender, so they
need no power either, or as the bridge's bot."""

from __future__ import annotations

from collections.abc import Callable

from bot.engine.delayed import ArmReply, Listed, Support
from bot.engine.redactor import Outcome, Reply
from bot.matrix.api import MatrixHttp
from bot.matrix.transport import HttpTransport

# Delayed redactions held at most for each local person: Synapse counts every delayed
# event of an account (default 100), and people's own clients use some (Element Call
# schedules its leave events so), which Lethe must not crowd out.
PERSON_SLOTS = 50


class BridgeTransport:
    """A local sender who has left the room may not redact any more: then the bridge's
    bot tries, which works where it may redact others' messages."""

    def __init__(self, http: MatrixHttp, is_local: Callable[[str], bool],
                 own_user: str = "") -> None:
        self._is_local = is_local
        self._as_sender = HttpTransport(http, as_user=lambda s: s if is_local(s) else None,
                                        own_user=own_user)
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

    # --- delayed redactions ----------------------------------------------------------

    @property
    def own_user(self) -> str:
        return self._as_sender.own_user

    def delayed_user(self, sender: str) -> str:
        return self._as_sender.delayed_user(sender)

    def slots(self, user: str) -> int | None:
        return None if user == self.own_user else PERSON_SLOTS

    async def delayed_support(self) -> Support | None:
        return await self._as_sender.delayed_support()

    async def arm(self, room_id: str, event_id: str, sender: str, txn_id: str,
                  delay_ms: int) -> ArmReply:
        return await self._as_sender.arm(room_id, event_id, sender, txn_id, delay_ms)

    async def cancel_delayed(self, delay_id: str, user: str) -> Reply:
        return await self._as_sender.cancel_delayed(delay_id, user)

    async def list_delayed(self, user: str) -> list[Listed] | None:
        return await self._as_sender.list_delayed(user)
