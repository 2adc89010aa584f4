"""The appservice API the homeserver calls: transactions, ping, and user/room queries
(which this bridge never answers with a user or a room).

Every request must carry the registration's ``hs_token`` (``Authorization: Bearer`` or
the legacy ``access_token`` query parameter). A transaction is answered 200 only once
its events are committed; any other answer makes the homeserver send it again.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from bot.matrix.http import HomeserverUnavailable

log = logging.getLogger(__name__)

APP_V1 = "/_matrix/app/v1"

TransactionHandler = Callable[[str, Mapping[str, Any]], Awaitable[None]]


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("access_token")


def make_app(hs_token: str, on_transaction: TransactionHandler) -> web.Application:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        token = _token(request)
        if token is None or not hmac.compare_digest(token.encode(), hs_token.encode()):
            log.warning("refused %s %s: wrong or missing hs_token", request.method,
                        request.path)
            return _error(403, "M_FORBIDDEN", "wrong or missing hs_token")
        return await handler(request)

    async def transaction(request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "M_NOT_JSON", "the transaction is not JSON")
        if not isinstance(body, dict):
            return _error(400, "M_BAD_JSON", "the transaction must be a JSON object")
        try:
            await on_transaction(txn_id, body)
        except HomeserverUnavailable as exc:
            log.warning("transaction %s not processed (%s); the homeserver will send it again",
                        txn_id, exc)
            return _error(503, "M_UNKNOWN", "the homeserver could not be asked; try again")
        except Exception:
            log.exception("transaction %s failed; the homeserver will send it again", txn_id)
            return _error(500, "M_UNKNOWN", "internal error; try again")
        return web.json_response({})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def no_such_user(request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "this bridge creates no users")

    async def no_such_room(request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "this bridge creates no rooms")

    async def unrecognized(request: web.Request) -> web.Response:
        return _error(404, "M_UNRECOGNIZED", "unrecognized request")

    app = web.Application(middlewares=[authenticate])
    app.router.add_put(APP_V1 + "/transactions/{txn_id}", transaction)
    app.router.add_post(APP_V1 + "/ping", ping)
    app.router.add_get(APP_V1 + "/users/{user_id}", no_such_user)
    app.router.add_get(APP_V1 + "/rooms/{alias}", no_such_room)
    app.router.add_route("*", "/{tail:.*}", unrecognized)
    return app


class AppserviceServer:
    """The HTTP listener; started and stopped by the bridge."""

    def __init__(self, hs_token: str, on_transaction: TransactionHandler) -> None:
        self._app = make_app(hs_token, on_transaction)
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
