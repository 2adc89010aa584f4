"""The engine's Transport over the client-server API (bot/matrix/api.py): a redaction
and its verification, with each reply classified for the redactor."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.engine.redactor import REDACTION_REASON, Outcome, Reply
from bot.matrix.api import HomeserverUnavailable, HttpReply, MatrixHttp
from bot.matrix.events import is_redacted


def reply_outcome(reply: HttpReply) -> Reply:
    """Classify an error reply for the redactor."""
    if reply.status == 429 or reply.errcode == "M_LIMIT_EXCEEDED":
        return Reply(Outcome.RATE_LIMITED, reply.retry_after_ms, "rate limited")
    if reply.status == 403:
        return Reply(Outcome.FORBIDDEN, detail=reply.errcode or "forbidden")
    if reply.status == 404:
        return Reply(Outcome.NOT_FOUND, detail=reply.errcode or "not found")
    if reply.status >= 500:
        return Reply(Outcome.TRANSIENT, detail=f"HTTP {reply.status}")
    return Reply(Outcome.NOT_FOUND, detail=f"rejected: HTTP {reply.status} {reply.errcode}")


class HttpTransport:
    """``as_user`` maps an event's sender to the ``user_id`` to act as (appservice
    masquerading), or None to act as the token's own user."""

    def __init__(self, http: MatrixHttp,
                 as_user: Callable[[str], str | None] | None = None) -> None:
        self._http = http
        self._as_user = as_user

    def _params(self, sender: str) -> dict[str, str]:
        user = self._as_user(sender) if self._as_user is not None else None
        return {"user_id": user} if user else {}

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        try:
            reply = await self._http.redact(room_id, event_id, txn_id, REDACTION_REASON,
                                            **self._params(sender))
        except HomeserverUnavailable as exc:
            return Reply(Outcome.TRANSIENT, detail=str(exc))
        if not reply.ok:
            return reply_outcome(reply)
        redaction_id = reply.body.get("event_id") if isinstance(reply.body, Mapping) else None
        return Reply(Outcome.OK, event_id=redaction_id if isinstance(redaction_id, str) else None)

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        try:
            reply = await self._http.event(room_id, event_id, **self._params(sender))
        except HomeserverUnavailable as exc:
            return Reply(Outcome.TRANSIENT, detail=str(exc))
        if reply.ok:
            return Reply(Outcome.REDACTED if is_redacted(reply.body) else Outcome.PRESENT)
        return reply_outcome(reply)
