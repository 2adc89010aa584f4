"""The client-server API on aiohttp: every endpoint Lethe calls without nio, for the
calls whose exact status codes matter (redaction and its verification, state,
history paging, joins, the appservice ping) and for the admin commands.

matrix-nio retries 429s forever and hides status codes; the redaction path needs
``retry_after_ms``, 403 vs 404, and a transaction id it chose itself. The bridge
uses the same class with an appservice token and ``user_id`` masquerading. Nothing
here knows the engine (bot/matrix/transport.py adapts this to it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.errors import HomeserverError

log = logging.getLogger(__name__)

CLIENT_V1 = "/_matrix/client/v1"
CLIENT_V3 = "/_matrix/client/v3"
ADMIN_V1 = "/_synapse/admin/v1"  # Synapse's admin API: only with an admin's token
# Delayed events (MSC4140), still under their unstable prefix.
DELAYED_EVENTS = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
DELAY_PARAM = "org.matrix.msc4140.delay"


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
        query = {**messages_query(start, limit, direction), **params}
        return await self.request(
            "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/messages", params=query
        )

    async def event(self, room_id: str, event_id: str, **params: str) -> HttpReply:
        return await self.request(
            "GET", f"{CLIENT_V3}/rooms/{q(room_id)}/event/{q(event_id)}",
            params=params or None,
        )

    async def relations(self, room_id: str, event_id: str, **params: str) -> HttpReply:
        return await self.request(
            "GET", f"{CLIENT_V1}/rooms/{q(room_id)}/relations/{q(event_id)}",
            params=params or None,
        )

    async def redact(self, room_id: str, event_id: str, txn_id: str, reason: str,
                     **params: str) -> HttpReply:
        return await self.request(
            "PUT", f"{CLIENT_V3}/rooms/{q(room_id)}/redact/{q(event_id)}/{q(txn_id)}",
            json={"reason": reason}, params=params or None,
        )

    async def send_delayed(self, room_id: str, event_type: str, txn_id: str,
                           content: Mapping[str, Any], delay_ms: int,
                           **params: str) -> HttpReply:
        """Have the homeserver send the event ``delay_ms`` from now (MSC4140); answers
        its ``delay_id``."""
        return await self.request(
            "PUT", f"{CLIENT_V3}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id)}",
            json=content, params={DELAY_PARAM: str(delay_ms), **params},
        )

    async def delayed_events(self, **params: str) -> HttpReply:
        """The account's delayed events still to be sent (``delayed_events``)."""
        return await self.request("GET", DELAYED_EVENTS, params=params or None)

    async def cancel_delayed(self, delay_id: str, **params: str) -> HttpReply:
        reply = await self.request("POST", f"{DELAYED_EVENTS}/{q(delay_id)}/cancel", json={},
                                   params=params or None)
        if reply.errcode == "M_UNRECOGNIZED":  # the MSC's first form of it
            reply = await self.request("POST", f"{DELAYED_EVENTS}/{q(delay_id)}",
                                       json={"action": "cancel"}, params=params or None)
        return reply

    async def get_account_data(self, user_id: str, event_type: str,
                               **params: str) -> HttpReply:
        """``user_id``'s global account data of ``event_type`` (404: none)."""
        return await self.request(
            "GET", f"{CLIENT_V3}/user/{q(user_id)}/account_data/{q(event_type)}",
            params=params or None)

    async def put_account_data(self, user_id: str, event_type: str,
                               content: Mapping[str, Any], **params: str) -> HttpReply:
        return await self.request(
            "PUT", f"{CLIENT_V3}/user/{q(user_id)}/account_data/{q(event_type)}",
            json=content, params=params or None)

    async def profile(self, user_id: str) -> HttpReply:
        """A user's profile; 404 for a local user who does not exist."""
        return await self.request("GET", f"{CLIENT_V3}/profile/{q(user_id)}")

    async def joined_members(self, room_id: str, **params: str) -> HttpReply:
        """The room's joined members, in ``body["joined"]`` (user id -> profile)."""
        return await self.request("GET", f"{CLIENT_V3}/rooms/{q(room_id)}/joined_members",
                                  params=params or None)

    async def send_message(self, room_id: str, txn_id: str, content: Mapping[str, Any],
                           **params: str) -> HttpReply:
        """An unencrypted ``m.room.message`` (the bridge's replies; it has no E2EE)."""
        return await self.request(
            "PUT", f"{CLIENT_V3}/rooms/{q(room_id)}/send/m.room.message/{q(txn_id)}",
            json=content, params=params or None)

    async def join(self, room_id: str) -> HttpReply:
        return await self.request("POST", f"{CLIENT_V3}/rooms/{q(room_id)}/join", json={})

    async def leave(self, room_id: str) -> HttpReply:
        return await self.request("POST", f"{CLIENT_V3}/rooms/{q(room_id)}/leave", json={})

    async def whoami(self) -> HttpReply:
        return await self.request("GET", f"{CLIENT_V3}/account/whoami")

    async def joined_rooms(self) -> HttpReply:
        return await self.request("GET", f"{CLIENT_V3}/joined_rooms")

    async def resolve_alias(self, alias: str) -> HttpReply:
        return await self.request("GET", f"{CLIENT_V3}/directory/room/{q(alias)}")

    async def query_keys(self, device_keys: Mapping[str, list[str]],
                         timeout_ms: int | None = None) -> HttpReply:
        body: dict[str, Any] = {"device_keys": device_keys}
        if timeout_ms is not None:
            body["timeout"] = timeout_ms
        return await self.request("POST", f"{CLIENT_V3}/keys/query", json=body)

    async def upload_signing_keys(self, body: Mapping[str, Any]) -> HttpReply:
        return await self.request("POST", f"{CLIENT_V3}/keys/device_signing/upload",
                                  json=body)

    async def upload_signatures(self, body: Mapping[str, Any]) -> HttpReply:
        return await self.request("POST", f"{CLIENT_V3}/keys/signatures/upload", json=body)

    async def ping_appservice(self, appservice_id: str, txn_id: str) -> HttpReply:
        """Ask the homeserver to ping the appservice back (MSC2659)."""
        return await self.request("POST", f"{CLIENT_V1}/appservice/{q(appservice_id)}/ping",
                                  json={"transaction_id": txn_id})

    async def versions(self) -> HttpReply:
        """The spec versions and ``unstable_features`` the homeserver advertises."""
        return await self.request("GET", "/_matrix/client/versions")

    # --- Synapse's admin API (the token must be a homeserver admin's) ----------

    async def admin_server_version(self) -> HttpReply:
        return await self.request("GET", f"{ADMIN_V1}/server_version")

    async def admin_fetch_event(self, event_id: str) -> HttpReply:
        """The event as stored, not as clients see it: a redacted event's original
        content until the server prunes it (``redaction_retention_period``)."""
        return await self.request("GET", f"{ADMIN_V1}/fetch_event/{q(event_id)}")

    async def admin_media_info(self, server_name: str, media_id: str) -> HttpReply:
        return await self.request("GET", f"{ADMIN_V1}/media/{q(server_name)}/{q(media_id)}")

    async def admin_delete_media(self, server_name: str, media_id: str) -> HttpReply:
        """Delete a local upload and its thumbnails (404: unknown or already gone)."""
        return await self.request("DELETE",
                                  f"{ADMIN_V1}/media/{q(server_name)}/{q(media_id)}")

    async def admin_purge_history(self, room_id: str, up_to_ts: int | None = None, *,
                                  up_to_event_id: str | None = None) -> HttpReply:
        """Start purging the room's events before ``up_to_ts`` (or before the event
        ``up_to_event_id``) from the database, local ones included; answers a
        ``purge_id`` to follow (admin_purge_status)."""
        point: dict[str, Any] = ({"purge_up_to_event_id": up_to_event_id}
                                 if up_to_event_id is not None else {"purge_up_to_ts": up_to_ts})
        return await self.request(
            "POST", f"{ADMIN_V1}/purge_history/{q(room_id)}",
            json={**point, "delete_local_events": True},
        )

    async def admin_purge_status(self, purge_id: str) -> HttpReply:
        return await self.request("GET", f"{ADMIN_V1}/purge_history_status/{q(purge_id)}")


def messages_query(start: str | None, limit: int, direction: str = "b") -> dict[str, str]:
    """The query of one ``/messages`` page from ``start`` (None: the newest end)."""
    query = {"dir": direction, "limit": str(limit)}
    if start:
        query["from"] = start
    return query


async def page_back(
    fetch: Callable[[str | None], Awaitable[Mapping[str, Any]]],
    start: str | None,
    *,
    max_pages: int | None = None,
) -> AsyncIterator[Mapping[str, Any]]:
    """The one ``/messages`` pager: the body of each page back from ``start``, which
    ``fetch`` gets for a token (judging the reply its caller's way). It ends after a
    page without events or without an ``end`` token (the start of the room), or after
    ``max_pages``; the caller judges each page's ``chunk``."""
    token = start
    pages = 0
    while max_pages is None or pages < max_pages:
        pages += 1
        body = await fetch(token)
        yield body
        if reached_start(body):
            return
        token = str(body["end"])


def reached_start(body: Mapping[str, Any]) -> bool:
    """Whether a ``/messages`` page is the last one back: no events or no ``end``."""
    chunk = body.get("chunk")
    return not isinstance(chunk, list) or not chunk or not isinstance(body.get("end"), str)
