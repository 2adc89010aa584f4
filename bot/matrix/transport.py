"""The engine's Transport over the client-server API (bot/matrix/api.py): a redaction
and its verification, with each reply classified for the redactor; and its
MediaTransport over Synapse's admin API, for deleting the files of expired messages;
DelayedTransport: delayed redactions scheduled with the homeserver, cancelled and
listed (bot/engine/delayed.py, bot/matrix/delayed.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bot.engine.delayed import ArmOutcome, ArmReply, Listed, Support
from bot.engine.media import MediaOutcome, MediaReply
from bot.engine.redactor import REDACTION_REASON, Outcome, Reply
from bot.erasureconfig import ErasureConfig
from bot.matrix import delayed
from bot.matrix.api import HomeserverUnavailable, HttpReply, MatrixHttp
from bot.matrix.events import is_redacted

MAX_LIST_PAGES = 100


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
    masquerading), or None to act as the token's own user, ``own_user``."""

    def __init__(self, http: MatrixHttp,
                 as_user: Callable[[str], str | None] | None = None,
                 own_user: str = "") -> None:
        self._http = http
        self._as_user = as_user
        self._own_user = own_user

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

    # --- delayed redactions (bot/engine/delayed.py) --------------------------------

    @property
    def own_user(self) -> str:
        return self._own_user

    def delayed_user(self, sender: str) -> str:
        user = self._as_user(sender) if self._as_user is not None else None
        return user or self._own_user

    def slots(self, user: str) -> int | None:
        return None

    def _as(self, user: str) -> dict[str, str]:
        """Acting as ``user``: masquerading (appservice), or the token's own account."""
        return {"user_id": user} if self._as_user is not None else {}

    async def delayed_support(self) -> Support | None:
        try:
            reply = await self._http.versions()
        except HomeserverUnavailable:
            return None
        return delayed.support_from_versions(reply.body) if reply.ok else None

    async def arm(self, room_id: str, event_id: str, sender: str, txn_id: str,
                  delay_ms: int) -> ArmReply:
        content = {"redacts": event_id, "reason": REDACTION_REASON}
        try:
            reply = await self._http.send_delayed(room_id, "m.room.redaction", txn_id, content,
                                                  delay_ms, **self._params(sender))
        except HomeserverUnavailable as exc:
            return ArmReply(ArmOutcome.TRANSIENT, detail=str(exc))
        return delayed.arm_reply(reply)

    async def cancel_delayed(self, delay_id: str, user: str) -> Reply:
        try:
            reply = await self._http.cancel_delayed(delay_id, **self._as(user))
        except HomeserverUnavailable as exc:
            return Reply(Outcome.TRANSIENT, detail=str(exc))
        return Reply(Outcome.OK) if reply.ok else reply_outcome(reply)

    async def list_delayed(self, user: str) -> list[Listed] | None:
        found: list[Listed] = []
        params = self._as(user)
        for _ in range(MAX_LIST_PAGES):
            try:
                reply = await self._http.delayed_events(**params)
            except HomeserverUnavailable:
                return None
            if reply.status == 404 and reply.errcode == "M_UNRECOGNIZED":
                return []  # no delayed events here at all: none to find
            if not reply.ok:
                return None
            found += delayed.listed(reply.body)
            batch = reply.body.get("next_batch")
            if not isinstance(batch, str) or not batch:
                return found
            params = {**self._as(user), "from": batch}
        return None


class AdminMediaTransport:
    """Deletes local media with Synapse's admin API. ``http`` carries a homeserver
    admin's token, apart from the front's own (never logged: see MatrixHttp)."""

    def __init__(self, http: MatrixHttp) -> None:
        self.http = http

    @classmethod
    def from_config(cls, homeserver_url: str, erasure: ErasureConfig) -> AdminMediaTransport | None:
        """One when the config deletes media (an admin token, and ``erasure.media``)."""
        if not erasure.deletes_media or erasure.admin_token is None:
            return None
        return cls(MatrixHttp(homeserver_url, erasure.admin_token))

    async def close(self) -> None:
        await self.http.close()

    async def delete_media(self, server: str, media_id: str) -> MediaReply:
        try:
            reply = await self.http.admin_delete_media(server, media_id)
        except HomeserverUnavailable as exc:
            return MediaReply(MediaOutcome.TRANSIENT, detail=str(exc))
        return media_outcome(reply)


def media_outcome(reply: HttpReply) -> MediaReply:
    """Classify the admin API's answer to a media deletion."""
    if reply.ok or (reply.status == 404 and reply.errcode == "M_NOT_FOUND"):
        return MediaReply(MediaOutcome.DELETED)  # 404 M_NOT_FOUND: gone already
    detail = f"HTTP {reply.status} {reply.errcode}".strip()
    if reply.status == 429 or reply.errcode == "M_LIMIT_EXCEEDED":
        return MediaReply(MediaOutcome.RATE_LIMITED, reply.retry_after_ms, detail)
    # A 404 without M_NOT_FOUND is no answer about the file: the admin API is not
    # there (a reverse proxy that does not pass /_synapse/admin, or not Synapse).
    if reply.status in (401, 403, 404):
        return MediaReply(MediaOutcome.REFUSED, detail=detail)
    if reply.status >= 500:
        return MediaReply(MediaOutcome.TRANSIENT, detail=detail)
    return MediaReply(MediaOutcome.REJECTED, detail=detail)
