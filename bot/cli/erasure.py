"""What the homeserver still stores of the events Lethe redacted, asked with a
homeserver admin's access token (Synapse's admin API, never the bot's login).

A redaction empties an event for clients at once, but Synapse keeps the original in
its database for ``redaction_retention_period`` and then prunes it ("erased"); an
admin purge deletes the event outright ("purged": ``fetch_event`` answers 404). Only
whether the stored content has keys beyond what redaction keeps is looked at: the
content is never kept, printed or logged, and the reply is dropped at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum

from bot.engine.model import Erasure, MediaState
from bot.engine.store import StoreBackend
from bot.erasureconfig import ADMIN_TOKEN_ENV, ErasureConfig
from bot.errors import HomeserverError, SetupError
from bot.matrix.api import HomeserverUnavailable, HttpReply, MatrixHttp

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
PARALLEL = 8  # fetches at once: an audit must not crowd out the bot's redactions
TRIES = 3  # per event, for 5xx and network errors (429s are waited out)
TOKEN_HELP = (f"set {ADMIN_TOKEN_ENV} or erasure.admin_token_file (a file of mode 0600) "
              "to the access token of a homeserver admin")
# An id no event has: asking for it tells an admin's token (404) from another (403).
PROBE_EVENT_ID = "$lethe-admin-probe"


class NoAdminToken(SetupError):
    """No homeserver admin token is configured."""


class TokenRefused(HomeserverError):
    """The homeserver does not know the admin token (revoked, or mistyped)."""


class NotAnAdmin(SetupError):
    """The token is valid but not a homeserver admin's, or the server lacks the API."""


def admin_token(erasure: ErasureConfig, needed_for: str) -> str:
    if erasure.admin_token is None:
        raise NoAdminToken(f"{needed_for} needs a homeserver admin's token: {TOKEN_HELP}")
    return erasure.admin_token


@asynccontextmanager
async def admin_http(homeserver_url: str, erasure: ErasureConfig,
                     needed_for: str) -> AsyncIterator[MatrixHttp]:
    """An HTTP client with the admin token, apart from the bot's own login."""
    http = MatrixHttp(homeserver_url, admin_token(erasure, needed_for))
    try:
        yield http
    finally:
        await http.close()


def refused(reply: HttpReply, erasure: ErasureConfig) -> None:
    """Raise for a reply that says the admin token cannot be used (never naming it)."""
    source = erasure.token_source or "the admin token"
    if reply.status == 401:
        raise TokenRefused(f"the homeserver refused the admin token from {source} "
                           f"({reply.errcode or 'HTTP 401'}): revoked or mistyped?")
    if reply.status == 403:
        raise NotAnAdmin(f"the token from {source} is not a homeserver admin's "
                         f"({reply.errcode or 'HTTP 403'}); {TOKEN_HELP}")
    if reply.status in (404, 405) and reply.errcode == "M_UNRECOGNIZED":
        raise NotAnAdmin("this homeserver has no GET /_synapse/admin/v1/fetch_event "
                         "(Synapse 1.140 or later has it)")


async def check_admin(http: MatrixHttp, erasure: ErasureConfig) -> None:
    """That the token is a homeserver admin's and the server has ``fetch_event``."""
    refused(await http.admin_fetch_event(PROBE_EVENT_ID), erasure)


# --- what is stored -------------------------------------------------------------------


class Stored(Enum):
    HELD = "held"  # the original content is still in the homeserver's database
    ERASED = "erased"  # the event is stored pruned, as redaction leaves it
    PURGED = "purged"  # the event is gone from the database (404)
    ERROR = "error"  # the homeserver could not say


# What redaction keeps of an event's content (the redaction algorithm of room version
# 11; older versions keep less). None: everything. Lethe redacts only non-state events,
# whose content redaction empties; the others are here so the rule is the whole rule.
_KEPT: dict[str, frozenset[str] | None] = {
    "m.room.create": None,
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server",
                                "third_party_invite"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset({"ban", "events", "events_default", "invite", "kick",
                                      "redact", "state_default", "users", "users_default"}),
    "m.room.history_visibility": frozenset({"history_visibility"}),
    "m.room.redaction": frozenset({"redacts"}),
}


def holds_original(event: object) -> bool:
    """Whether a stored event (``fetch_event``'s ``event``) has content keys that
    redaction would have removed. Only the key names are compared."""
    if not isinstance(event, Mapping):
        return False
    content = event.get("content")
    if not isinstance(content, Mapping) or not content:
        return False
    kept = _KEPT.get(str(event.get("type")), frozenset())
    return kept is not None and any(key not in kept for key in content)


def stored_state(reply: HttpReply, erasure: ErasureConfig) -> Stored:
    refused(reply, erasure)
    if reply.status == 404:
        return Stored.PURGED
    if not reply.ok:
        return Stored.ERROR
    return Stored.HELD if holds_original(reply.body.get("event")) else Stored.ERASED


async def ask(http: MatrixHttp, event_id: str, erasure: ErasureConfig) -> Stored:
    """What the homeserver stores of one event, retrying what may pass."""
    for attempt in range(1, TRIES + 1):
        try:
            reply = await http.admin_fetch_event(event_id)
        except HomeserverUnavailable:
            reply = HttpReply(503, {})
        if reply.status == 429:
            await asyncio.sleep(max(reply.retry_after_ms or 1000, 100) / 1000)
            continue
        state = stored_state(reply, erasure)
        if state is not Stored.ERROR or attempt == TRIES:
            return state
        await asyncio.sleep(0.5 * attempt)
    return Stored.ERROR


async def ask_all(http: MatrixHttp, entries: Sequence[Erasure], erasure: ErasureConfig,
                  on_each: Callable[[], None] | None = None) -> dict[str, Stored]:
    """``ask`` for every entry, ``PARALLEL`` at a time."""
    limit = asyncio.Semaphore(PARALLEL)

    async def one(entry: Erasure) -> tuple[str, Stored]:
        async with limit:
            state = await ask(http, entry.event_id, erasure)
        if on_each is not None:
            on_each()
        return entry.event_id, state

    return dict(await asyncio.gather(*(one(e) for e in entries)))


# --- media ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRef:
    """A file a ledger event referred to (``mxc://server/media_id``)."""

    event_id: str
    server: str
    media_id: str
    local: bool  # on this homeserver: it can say whether it still stores it


async def ledger_media(store: StoreBackend, event_ids: Sequence[str],
                       home_server: str) -> list[MediaRef]:
    """The files of these ledger events (the media table keeps their ids while media
    deletion is on, and the deleted ones for ``erasure.ledger``), which the audit asks
    the homeserver about: only ``home_server``'s own can be asked."""
    return [MediaRef(event_id, server, media_id,
                     server == home_server and state is not MediaState.REMOTE)
            for event_id, server, media_id, state in await store.media_of(event_ids)]


class MediaStored(Enum):
    PRESENT = "present"
    DELETED = "deleted"
    REMOTE = "remote"  # on another server: not ours to ask or delete
    ERROR = "error"


async def ask_media(http: MatrixHttp, refs: Sequence[MediaRef],
                    erasure: ErasureConfig) -> dict[MediaRef, MediaStored]:
    found: dict[MediaRef, MediaStored] = {}
    for ref in refs:
        if not ref.local:
            found[ref] = MediaStored.REMOTE
            continue
        try:
            reply = await http.admin_media_info(ref.server, ref.media_id)
        except HomeserverUnavailable:
            found[ref] = MediaStored.ERROR
            continue
        refused(reply, erasure)
        found[ref] = (MediaStored.PRESENT if reply.ok else
                      MediaStored.DELETED if reply.status == 404 else MediaStored.ERROR)
    return found


# --- the findings ---------------------------------------------------------------------

AGE_BUCKETS: tuple[tuple[int | None, str], ...] = (
    (HOUR_MS, "under an hour"),
    (DAY_MS, "1 hour to 1 day"),
    (7 * DAY_MS, "1 to 7 days"),
    (None, "over 7 days"),
)


@dataclass(frozen=True)
class Findings:
    entries: tuple[Erasure, ...]  # oldest first
    stored: Mapping[str, Stored]
    media: Mapping[MediaRef, MediaStored]

    def of(self, state: Stored) -> list[Erasure]:
        return [e for e in self.entries if self.stored.get(e.event_id) is state]

    def count(self, state: Stored) -> int:
        return len(self.of(state))

    def media_count(self, state: MediaStored) -> int:
        return sum(s is state for s in self.media.values())

    def held_by_age(self, now_ms: int) -> list[tuple[str, int]]:
        """How many originals are held, by how long ago Lethe redacted them."""
        counts = dict.fromkeys((label for _, label in AGE_BUCKETS), 0)
        for entry in self.of(Stored.HELD):
            age = now_ms - entry.redacted_at
            label = next(label for bound, label in AGE_BUCKETS if bound is None or age < bound)
            counts[label] += 1
        return [(label, n) for label, n in counts.items() if n]

    def past(self, bound_ms: int, now_ms: int) -> list[Erasure]:
        """Events whose original, or a local file, is still stored ``bound_ms`` or longer
        after Lethe redacted them (0: at all)."""
        with_media = {ref.event_id for ref, s in self.media.items() if s is MediaStored.PRESENT}
        return [e for e in self.entries if now_ms - e.redacted_at >= bound_ms and (
            self.stored.get(e.event_id) is Stored.HELD or e.event_id in with_media)]
