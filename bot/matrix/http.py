"""A small client-server API client on aiohttp, for the calls whose exact status codes
matter: redaction and its verification, state, and history paging.

matrix-nio retries 429s forever and hides status codes; the redaction path needs
``retry_after_ms``, 403 vs 404, and a transaction id it chose itself. The bridge
uses the same class with an appservice token and ``user_id`` masquerading.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.engine.redactor import REDACTION_REASON, Outcome, Reply
from bot.errors import HomeserverError

log = logging.getLogger(__name__)

CLIENT_V3 = "/_matrix/client/v3"


class HomeserverUnavailable(HomeserverError, ConnectionError):
    """No HTTP answer from the homeserver (refused, reset, timed out)."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: dict[str, Any]
    retry_after_ms: int | None = None

    @property
    def errcode(self) -> str:
        return str(self.body.get("errcode", ""))

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def q(value: str) -> str:
    return quote(value, safe="")


class MatrixHttp:
    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpReply:
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._get_session().request(
                method, url, json=json, params=params, headers=headers
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = {}
                if isinstance(body, list):
                    body = {"chunk": body}  # GET /state answers with a bare list
                elif not isinstance(body, dict):
                    body = {}
                retry = body.get("retry_after_ms")
                if not isinstance(retry, int) and "Retry-After" in resp.headers:
                    try:
                        retry = int(float(resp.headers["Retry-After"]) * 1000)
                    except ValueError:
                        retry = None
                return HttpReply(resp.status, body, retry if isinstance(retry, int) else None)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # Never include the URL's query or headers: they may carry tokens.
            raise HomeserverUnavailable(f"{method} {path.split('?')[0]}: {type(exc).__name__}") \
                from None

    # --- calls --------------------------------------------------------------

    async def get_state(self, room_id: str, event_type: str, state_key: str = "",
                        **params: str) -> HttpReply:
        return await self.request(
            "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
            params=params or None,
        )

    async def put_state(self, room_id: str, event_type: str, content: Mapping[str, Any],
                        state_key: str = "", **params: str) -> HttpReply:
        return await self.request(
            "PUT", f"{CLIENT_V3}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
            json=content, params=params or None,
        )

    async def full_state(self, room_id: str, **params: str) -> HttpReply:
        """The room's current state events, in ``body["chunk"]``."""
        return await self.request(
            "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/state", params=params or None
        )

    async def messages(self, room_id: str, start: str | None, direction: str = "b",
                       limit: int = 100, **params: str) -> HttpReply:
        query = {"dir": direction, "limit": str(limit), **params}
        if start:
            query["from"] = start
        return await self.request(
            "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/messages", params=query
        )


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


def is_redacted(event: Mapping[str, Any]) -> bool:
    unsigned = event.get("unsigned")
    if isinstance(unsigned, Mapping) and unsigned.get("redacted_because"):
        return True
    return not event.get("content")


class HttpTransport:
    """The engine's Transport over the client-server API.

    ``as_user`` maps an event's sender to the ``user_id`` to act as (appservice
    masquerading), or None to act as the token's own user.
    """

    def __init__(self, http: MatrixHttp, as_user: Any = None) -> None:
        self._http = http
        self._as_user = as_user

    def _params(self, sender: str) -> dict[str, str] | None:
        user = self._as_user(sender) if self._as_user is not None else None
        return {"user_id": user} if user else None

    async def redact(self, room_id: str, event_id: str, sender: str, txn_id: str) -> Reply:
        try:
            reply = await self._http.request(
                "PUT",
                f"{CLIENT_V3}/rooms/{q(room_id)}/redact/{q(event_id)}/{q(txn_id)}",
                json={"reason": REDACTION_REASON},
                params=self._params(sender),
            )
        except HomeserverUnavailable as exc:
            return Reply(Outcome.TRANSIENT, detail=str(exc))
        if not reply.ok:
            return reply_outcome(reply)
        redaction_id = reply.body.get("event_id") if isinstance(reply.body, Mapping) else None
        return Reply(Outcome.OK, event_id=redaction_id if isinstance(redaction_id, str) else None)

    async def check(self, room_id: str, event_id: str, sender: str) -> Reply:
        try:
            reply = await self._http.request(
                "GET",
                f"{CLIENT_V3}/rooms/{q(room_id)}/event/{q(event_id)}",
                params=self._params(sender),
            )
        except HomeserverUnavailable as exc:
            return Reply(Outcome.TRANSIENT, detail=str(exc))
        if reply.ok:
            return Reply(Outcome.REDACTED if is_redacted(reply.body) else Outcome.PRESENT)
        return reply_outcome(reply)
