"""Catching up on gaps: after a limited sync timeline, page back through ``/messages``
to the last event Lethe saw, so nothing sent while it was away escapes its timer.
When rebuilding a lost database, page back in every joined room to the bot's own
join instead. ``/messages`` gives encrypted events as ciphertext: each is decrypted
(when the bot holds its room key) so the files it points at are known, as they are
for events the sync brings; one it cannot decrypt is still tracked and redacted,
but its files are not known and stay.

A page that fails for a reason that may pass raises GapUnread: the sync is then
not stored and is tried again. A gap longer than BACKFILL_PAGES pages, or one the
homeserver refuses to show, is tracked as far as it was read and its span is
reported (log, `!lethe status`); its state still applies (bot/front/reader.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nio import AsyncClient, Event, MegolmEvent, SyncResponse

from bot.engine.engine import Engine
from bot.front.untracked import UntrackedSpan
from bot.matrix.api import HomeserverUnavailable, MatrixHttp, page_back, reached_start
from bot.matrix.events import ENCRYPTED, as_encrypted

log = logging.getLogger(__name__)

BACKFILL_PAGES = 20  # up to 2,000 events of a gap per room and sync
BACKFILL_PAGE_SIZE = 100


class GapUnread(Exception):
    """A gap could not be read for a reason that may pass (the homeserver down, 5xx,
    429): the sync must not be persisted, or its token would skip the gap for good."""


class _Refused(Exception):
    """The homeserver refused the history for good (e.g. history the bot may not see)."""


@dataclass(frozen=True)
class Backfill:
    """What paging back over gaps brought: each room's events (oldest first), the spans
    that could not be read, and the rooms whose schedule was rebuilt from history."""

    events: dict[str, list[Mapping[str, Any]]]
    untracked: dict[str, UntrackedSpan]
    rebuilt: frozenset[str]


Decrypt = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]


def nio_decrypter(client: AsyncClient) -> Decrypt:
    """The decrypted content of a raw encrypted event, with the bot's room keys; None
    when it cannot be decrypted."""

    def decrypt(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if client.olm is None:
            return None
        try:
            parsed = Event.parse_encrypted_event(dict(event))
            if not isinstance(parsed, MegolmEvent):
                return None
            plain = client.decrypt_event(parsed)
        except Exception:  # anybody's ciphertext: whatever fails, it stays undecrypted
            return None
        source = getattr(plain, "source", None)
        content = source.get("content") if isinstance(source, Mapping) else None
        return content if isinstance(content, Mapping) else None

    return decrypt


class CatchUp:
    def __init__(self, http: MatrixHttp, engine: Engine, bot_user_id: str,
                 decrypt: Decrypt | None = None) -> None:
        self._http = http
        self._engine = engine
        self._bot = bot_user_id
        self._decrypt = decrypt

    async def backfill(self, resp: SyncResponse, known: set[str], rebuilding: bool) -> Backfill:
        bot = self._bot
        gaps: dict[str, list[Mapping[str, Any]]] = {}
        untracked: dict[str, UntrackedSpan] = {}
        rebuilt: set[str] = set()
        for room_id, info in resp.rooms.join.items():
            timeline_ids = {getattr(e, "event_id", None) for e in info.timeline.events}
            stop: Callable[[Mapping[str, Any]], bool]
            if room_id in known:
                if not info.timeline.limited:
                    continue
                row = await self._engine.room(room_id)
                stop_at = row.last_event_id if row else None
                if stop_at is None or stop_at in timeline_ids:
                    continue

                def stop(event: Mapping[str, Any], stop_at: str = stop_at) -> bool:
                    return event.get("event_id") == stop_at
            elif rebuilding:
                rebuilt.add(room_id)
                sources = [getattr(e, "source", None) for e in info.timeline.events]
                if not info.timeline.limited or any(
                        isinstance(src, Mapping) and _joins(src, bot) for src in sources):
                    continue  # the timeline reaches back to the bot's join
                stop_at = None

                def stop(event: Mapping[str, Any]) -> bool:
                    return _joins(event, bot)
            else:
                continue
            events, complete, reason = await self._page_back(
                room_id, info.timeline.prev_batch, stop)
            if not complete:
                oldest = events[-1] if events else _source_of(info.timeline.events)
                span = UntrackedSpan(
                    await self._event_ts(room_id, stop_at) if stop_at else None,
                    _origin_ts(oldest), reason)
                untracked[room_id] = span
                log.warning("gap in %s: %s; read back %d events", room_id, span.describe(),
                            len(events))
            events.reverse()
            gaps[room_id] = [self._plain(event) for event in events]
            log.info("gap in %s: caught up on %d events", room_id, len(events))
        return Backfill(gaps, untracked, frozenset(rebuilt))

    def _plain(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._decrypt is None or event.get("type") != ENCRYPTED or "state_key" in event:
            return event
        content = self._decrypt(event)
        return event if content is None else as_encrypted(event, content)

    async def _page_back(
        self, room_id: str, token: str | None, stop: Callable[[Mapping[str, Any]], bool]
    ) -> tuple[list[Mapping[str, Any]], bool, str]:
        """Events from ``token`` back to the first one ``stop`` accepts (excluded),
        newest first; whether that one (or the room's first event) was reached; and if
        not, why (fixed words)."""

        async def fetch(start: str | None) -> Mapping[str, Any]:
            try:
                page = await self._http.messages(room_id, start, limit=BACKFILL_PAGE_SIZE)
            except HomeserverUnavailable as exc:
                raise GapUnread(f"{room_id}: {exc}") from None
            if page.status == 429 or page.status >= 500:
                raise GapUnread(f"{room_id}: HTTP {page.status}")
            if not page.ok:
                raise _Refused(f"the homeserver refused the history: {page.status}")
            if not isinstance(page.body.get("chunk"), list):
                raise GapUnread(f"{room_id}: a /messages page without its events")
            return page.body

        events: list[Mapping[str, Any]] = []
        try:
            async for body in page_back(fetch, token, max_pages=BACKFILL_PAGES):
                for event in body["chunk"]:
                    if not isinstance(event, Mapping):
                        continue
                    if stop(event):
                        return events, True, ""
                    events.append(event)
                if reached_start(body):
                    return events, True, ""  # the start of the room: nothing older to miss
        except _Refused as exc:
            # Refused for good: retrying would hold every room's sync back forever.
            return events, False, str(exc)
        return events, False, f"a gap longer than {BACKFILL_PAGES * BACKFILL_PAGE_SIZE} events"

    async def _event_ts(self, room_id: str, event_id: str) -> int | None:
        """When the last event seen before a gap was sent (for the report), if known."""
        try:
            reply = await self._http.event(room_id, event_id)
        except HomeserverUnavailable:
            return None
        return _origin_ts(reply.body) if reply.ok else None


def _joins(event: Mapping[str, Any], user_id: str) -> bool:
    """Whether ``event`` is ``user_id`` joining (not a profile change while joined)."""
    if event.get("type") != "m.room.member" or event.get("state_key") != user_id:
        return False
    content = event.get("content")
    if not isinstance(content, Mapping) or content.get("membership") != "join":
        return False
    unsigned = event.get("unsigned")
    before = unsigned.get("prev_content") if isinstance(unsigned, Mapping) else None
    return not (isinstance(before, Mapping) and before.get("membership") == "join")


def _origin_ts(event: object) -> int | None:
    ts = event.get("origin_server_ts") if isinstance(event, Mapping) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def _source_of(events: list[Any]) -> Mapping[str, Any] | None:
    source = getattr(events[0], "source", None) if events else None
    return source if isinstance(source, Mapping) else None
