"""What every admin command starts from: the config, the bot's saved login, an HTTP
client acting as the bot, and Lethe's database opened read-only.

The E2EE key store is never opened here: only the running bot may use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bot.cli.output import warn
from bot.cli.roomstate import RoomState
from bot.config import Config
from bot.engine.policy import PolicyError, parse_duration
from bot.engine.store import StoreBackend, StoreError, open_store
from bot.errors import CheckFailed, HomeserverError, LetheError, UsageError
from bot.matrix.api import HttpReply, MatrixHttp
from bot.matrix.credentials import Credentials, LoginFailed, load_credentials


def duration_arg(option: str, text: str, *, zero_ok: bool = False) -> int:
    """A duration option in milliseconds; exit 2 naming the option when malformed."""
    if zero_ok and text.strip() in ("0", "0s"):
        return 0
    try:
        return parse_duration(text)
    except PolicyError as exc:
        raise UsageError(f"{option}: {exc}") from None


class RequestError(LetheError):
    """The homeserver answered a request the command needs with an error."""


class RequestRefused(RequestError, CheckFailed):
    """The homeserver refused a request (4xx): the bot may not, or nothing is there."""


class RequestBroke(RequestError, HomeserverError):
    """The homeserver failed a request (5xx)."""


@dataclass
class Admin:
    config: Config
    creds: Credentials
    http: MatrixHttp

    @property
    def bot(self) -> str:
        return self.config.bot.user_id

    def checked(self, reply: HttpReply) -> HttpReply:
        """Any reply of the bot's login: a refused login is a failure of its own."""
        if reply.status == 401:
            raise LoginFailed(
                f"the homeserver refused the saved login of {self.bot} ({reply.errcode}); "
                "run `lethe login` again"
            )
        return reply

    async def expect(self, request: Awaitable[HttpReply], what: str) -> dict[str, Any]:
        """A request (a ``self.http`` call) that must succeed; otherwise a failure naming
        ``what`` (exit 4 when the homeserver is in trouble, 1 when it refused)."""
        reply = self.checked(await request)
        if not reply.ok:
            error = reply.body.get("error") or reply.errcode or "no details"
            kind = RequestBroke if reply.status >= 500 else RequestRefused
            raise kind(f"{what}: HTTP {reply.status}: {error}")
        return reply.body

    async def whoami(self) -> dict[str, Any]:
        return await self.expect(self.http.whoami(), "checking the login")

    async def joined_rooms(self) -> list[str]:
        body = await self.expect(self.http.joined_rooms(), "listing the bot's rooms")
        rooms = body.get("joined_rooms")
        return sorted(r for r in rooms if isinstance(r, str)) if isinstance(rooms, list) else []

    async def resolve_room(self, room: str) -> str:
        """A room id or alias of a room the bot is in, as a room id; exit 2 otherwise."""
        room_id = await room_id_of(self.http, room, self.checked)
        if room_id not in await self.joined_rooms():
            shown = room if room == room_id else f"{room} ({room_id})"
            raise UsageError(f"unknown room {shown}: the bot is not in it")
        return room_id

    async def room_state(self, room_id: str) -> RoomState:
        body = await self.expect(self.http.full_state(room_id),
                                 f"reading the state of {room_id}")
        chunk = body.get("chunk")
        events = [e for e in chunk if isinstance(e, Mapping)] if isinstance(chunk, list) else []
        return RoomState.from_events(room_id, events, self.config.default_cap_ms)

    async def event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        reply = self.checked(await self.http.event(room_id, event_id))
        return reply.body if reply.ok else None


async def room_id_of(http: MatrixHttp, room: str,
                     checked: Callable[[HttpReply], HttpReply]) -> str:
    """A room id, or an alias resolved to one (``checked`` judges the reply first);
    exit 2 when it is neither, or no such alias."""
    if room.startswith("!"):
        return room
    if not room.startswith("#"):
        raise UsageError(f"{room!r} is not a room: give a room id (!abc:server) or an "
                         "alias (#name:server)")
    reply = checked(await http.resolve_alias(room))
    room_id = reply.body.get("room_id")
    if reply.status == 404 or not isinstance(room_id, str):
        raise UsageError(f"unknown room {room}: no such alias")
    return room_id


def saved_login(config: Config) -> Credentials:
    """The bot's saved login; LoginFailed (exit 4) when there is none or it is not
    the configured account's."""
    creds = load_credentials(config.credentials_path)
    if creds is None:
        raise LoginFailed(f"no saved login in {config.credentials_path}: run "
                          f"`lethe -c {config.path} login` first")
    if creds.user_id != config.bot.user_id:
        raise LoginFailed(f"{config.credentials_path} belongs to {creds.user_id}, but "
                          f"bot.user_id is {config.bot.user_id}")
    return creds


@asynccontextmanager
async def admin_session(config: Config) -> AsyncIterator[Admin]:
    """An HTTP client acting as the bot, with its saved login."""
    creds = saved_login(config)
    http = MatrixHttp(config.homeserver.url, creds.access_token)
    try:
        yield Admin(config, creds, http)
    finally:
        await http.close()


@asynccontextmanager
async def readonly_store(config: Config, *, required: bool) -> AsyncIterator[StoreBackend | None]:
    """Lethe's database, read-only: safe while the bot runs (WAL readers never block
    its writer). With ``required=False`` a missing or unusable database is a warning
    and yields None."""
    try:
        store = await open_store(config.database, readonly=True)
    except StoreError as exc:
        if required:
            raise
        warn(f"{exc}; what Lethe has scheduled is unknown")
        store = None
    try:
        yield store
    finally:
        if store is not None:
            await store.close()
