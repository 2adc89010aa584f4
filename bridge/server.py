"""The appservice API the homeserver calls: transactions, ping, and user/room queries
(which this bridge never answers with a user or a room).

Every request must carry the registration's ``hs_token`` (``Authorization: Bearer`` or
the legacy ``access_token`` query parameter): without one it gets 401, with a wrong
one 403, as the appservice spec says. Refusals are logged at most once a minute, with
a count of the others, so whoever can reach the port cannot flood the log.

A transaction is answered 200 once its events are committed (malformed events left
out, each on its own), and also, at once, when no retry could ever store it (over
``MAX_TRANSACTION_BYTES``, not JSON, not an object). It gets a 5xx only when a later
delivery can succeed (the homeserver or the database unavailable): the homeserver
sends a transaction again until it gets a 2xx, and nothing after it meanwhile. A
standby bridge (or one starting) answers every push 503: it commits nothing.

``GET /health`` needs no token: 200 ``{"role": "active"}`` where pushes are stored,
503 with ``standby`` or ``starting`` elsewhere, for a load balancer in front of an
active bridge and its standbys (docs/bridge.md).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.intake import (
    MAX_TRANSACTION_BYTES,
    PushedTransaction,
    Unusable,
    is_transient,
    parse_transaction,
    shown,
    storable_txn_id,
    where,
)

log = logging.getLogger(__name__)

APP_V1 = "/_matrix/app/v1"
REFUSAL_LOG_INTERVAL_S = 60.0

TransactionHandler = Callable[[PushedTransaction], Awaitable[None]]
# Whether the bridge takes pushes now, and its role ("active", "standby", "starting").
HealthCheck = Callable[[], tuple[bool, str]]
HEALTH_PATH = "/health"  # no hs_token: a load balancer's health check asks it


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def _as_bytes(text: str) -> bytes:
    # Header values that are not UTF-8 arrive as lone surrogates; every str encodes so.
    return text.encode("utf-8", "surrogatepass")


def _credentials(request: web.Request) -> str | None:
    """The token the request carries, or None when it carries none."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    query = request.query.get("access_token")
    if query is not None:
        return query
    return "" if "Authorization" in request.headers else None  # another scheme: refused


class RefusalLog:
    """Logs refused requests at most once per ``interval_s``; the next line it writes
    counts those it left out."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next_at: float | None = None
        self.suppressed = 0

    def refused(self, request: web.Request, why: str) -> None:
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            self.suppressed += 1
            return
        self._next_at = now + self.interval_s
        more = (f" ({self.suppressed} more refused since the last such line)"
                if self.suppressed else "")
        self.suppressed = 0
        log.warning("refused %s %s from %s: %s%s", shown(request.method, 16),
                    shown(request.path), request.remote, why, more)

    def flush(self) -> None:
        if self.suppressed:
            log.warning("refused %d more request(s) without a valid hs_token", self.suppressed)
            self.suppressed = 0


def make_app(
    hs_token: str,
    on_transaction: TransactionHandler,
    *,
    max_body: int = MAX_TRANSACTION_BYTES,
    refusals: RefusalLog | None = None,
    health: HealthCheck | None = None,
) -> web.Application:
    expected = _as_bytes(hs_token)
    refusal_log = refusals if refusals is not None else RefusalLog()

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == HEALTH_PATH and request.method in ("GET", "HEAD"):
            return await handler(request)  # says only the role: no secret in it
        token = _credentials(request)
        if token is None:
            refusal_log.refused(request, "no hs_token")
            return _error(401, "M_UNAUTHORIZED", "missing hs_token")
        if not hmac.compare_digest(_as_bytes(token), expected):
            refusal_log.refused(request, "wrong hs_token")
            return _error(403, "M_FORBIDDEN", "wrong hs_token")
        return await handler(request)

    async def unusable(request: web.Request, txn_id: str, why: str) -> web.Response:
        # 200: a retry would fail the same way, and hold up every later transaction.
        log.error("transaction %s cannot be stored, %s; acknowledged so that the homeserver "
                  "goes on with the next one, its events are lost to the bridge",
                  shown(txn_id), why)
        await _drain(request, max_body)
        return web.json_response({})

    async def transaction(request: web.Request) -> web.Response:
        txn_id = storable_txn_id(request.match_info["txn_id"])
        length = request.content_length
        if length is not None and length > max_body:
            return await unusable(request, txn_id, f"it is {length} bytes, over the bridge's "
                                  f"bound of {max_body}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await unusable(request, txn_id, f"it is over the bridge's bound of "
                                  f"{max_body} bytes")
        body = await parse_transaction(raw)
        if isinstance(body, Unusable):
            return await unusable(request, txn_id, body.reason)
        try:
            await on_transaction(PushedTransaction(txn_id, body, len(raw)))
        except Exception as exc:
            if is_transient(exc):
                log.warning("transaction %s not stored (%s); the homeserver will send it "
                            "again", shown(txn_id), exc)
                return _error(503, "M_UNKNOWN", "not stored now; try again")
            # A bug the per-event checks did not catch: answering 5xx would make the
            # homeserver resend this forever and stop the bridge for every room.
            log.error("transaction %s dropped: storing it raised %s", shown(txn_id),
                      where(exc))
        return web.json_response({})

    async def serve_health(request: web.Request) -> web.Response:
        # 200 only where pushes are stored: a load balancer sends them there alone.
        ready, role = health() if health is not None else (True, "active")
        return web.json_response({"role": role}, status=200 if ready else 503)

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def no_such_user(request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "this bridge creates no users")

    async def no_such_room(request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "this bridge creates no rooms")

    async def unrecognized(request: web.Request) -> web.Response:
        return _error(404, "M_UNRECOGNIZED", "unrecognized request")

    # client_max_size: aiohttp's default (1 MiB) answers 413 to a transaction a
    # homeserver may well build, and it would resend that forever.
    app = web.Application(middlewares=[authenticate], client_max_size=max_body)
    app.router.add_put(APP_V1 + "/transactions/{txn_id}", transaction)
    app.router.add_post(APP_V1 + "/ping", ping)
    app.router.add_get(HEALTH_PATH, serve_health)
    app.router.add_get(APP_V1 + "/users/{user_id}", no_such_user)
    app.router.add_get(APP_V1 + "/rooms/{alias}", no_such_room)
    app.router.add_route("*", "/{tail:.*}", unrecognized)
    return app


async def _drain(request: web.Request, max_body: int) -> None:
    """Read what is left of the body, keeping none of it, so the homeserver's client
    sees its whole request read before the answer. Bounded: at most 8 bounds' worth."""
    left = 8 * max_body
    while left > 0:
        chunk = await request.content.readany()
        if not chunk:
            return
        left -= len(chunk)


class AppserviceServer:
    """The HTTP listener; started and stopped by the bridge."""

    def __init__(self, hs_token: str, on_transaction: TransactionHandler, *,
                 max_body: int = MAX_TRANSACTION_BYTES,
                 health: HealthCheck | None = None) -> None:
        self._refusals = RefusalLog()
        self._app = make_app(hs_token, on_transaction, max_body=max_body,
                             refusals=self._refusals, health=health)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        # No access log: the legacy access_token query parameter would land in it.
        # A short shutdown: a push cut off before its commit is simply re-sent by the
        # homeserver (same txn id), so waiting aiohttp's default 60 s buys nothing.
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._refusals.flush()
