"""What the homeserver pushes, checked before anything else reads it.

The homeserver builds each transaction, but the events in it come from everywhere:
remote servers' events arrive over federation, and Synapse checks some shapes (e.g.
``alt_aliases``) only for its own clients. So the bridge checks every event and
receipt here, each on its own. A malformed one is skipped (the caller logs its event
id and room, never content) and the rest of the transaction is stored. What passes
has the types the room reader and the engine rely on: identifiers are strings with
their sigil that SQLite can store (no lone surrogates), timestamps are integers
Matrix allows, and a state event has a string ``state_key``.

A transaction as a whole is either stored and answered 200, answered 200 at once
because no retry could ever store it (over ``MAX_TRANSACTION_BYTES``, not JSON, not
an object), or refused with a 5xx only when a retry can succeed (``is_transient``).
Anything else would make the homeserver send it again forever, holding up every
later transaction for every room on the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.engine.store import database_unavailable
from bot.matrix.api import HomeserverUnavailable
from bot.matrix.events import MAX_TS, is_id, storable

# The largest transaction the bridge reads. Synapse puts at most 100 PDUs and 100
# ephemeral events (plus 100 to-device messages, which this bridge does not ask for)
# in a transaction. A PDU is at most 64 KiB, but the client format it is pushed in
# adds `unsigned.prev_content` (a replaced state event, up to 64 KiB more) and, for an
# invite or knock, the stripped state of the room (7 events by default, up to 64 KiB
# each): at most about 100 x 9 x 64 KiB = 56.25 MiB, plus 200 x 64 KiB = 12.5 MiB of
# EDUs and to-device messages, ~69 MiB in all. 128 MiB leaves headroom; a body that
# large only ever arrives, authenticated, from the homeserver, and a typical
# transaction is a few kilobytes.
MAX_TRANSACTION_BYTES = 128 * 1024 * 1024
# Bodies above this are parsed in a thread, so the event loop (the scheduler, the
# redaction workers) keeps running meanwhile.
_PARSE_IN_THREAD_BYTES = 1024 * 1024
# Canonical JSON's integer range; power levels outside it are clamped to it, so what
# the bridge stores always fits an SQLite integer.
_MAX_INT = MAX_TS
_LEVEL_TEXT = re.compile(r"[+-]?[0-9]{1,20}")
_LEVEL_KEYS = ("users_default", "events_default", "state_default", "redact", "ban", "kick",
               "invite")


@dataclass(frozen=True)
class PushedTransaction:
    txn_id: str
    body: Mapping[str, Any]
    size: int  # bytes on the wire


@dataclass(frozen=True)
class Unusable:
    """A transaction no retry could ever store; answered 200 and logged."""

    reason: str  # fixed words and sizes, never content


@dataclass(frozen=True)
class Skipped:
    """An event left out of its transaction, and why (fixed words, never content)."""

    reason: str
    event_id: str | None
    room_id: str | None


# --- whole transactions -----------------------------------------------------------


def _parse(raw: bytes) -> Mapping[str, Any] | Unusable:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # also bytes that are not UTF-8, nesting too deep
        return Unusable("its body is not JSON the bridge can read")
    if not isinstance(body, Mapping):
        return Unusable("its body is not a JSON object")
    return body


async def parse_transaction(raw: bytes) -> Mapping[str, Any] | Unusable:
    if len(raw) > _PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(_parse, raw)
    return _parse(raw)


def storable_txn_id(txn_id: str) -> str:
    """The transaction id as the bridge stores it: a path segment may decode to lone
    surrogates, which SQLite cannot store; escaped, it stays unique and stable."""
    return txn_id.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")


# --- failures -----------------------------------------------------------------------


class TryLater(Exception):
    """The bridge cannot store a transaction now (it is stopping, or its engine fails
    on anything); a later delivery can succeed."""


def is_transient(exc: BaseException) -> bool:
    """A failure a later delivery of the same transaction can get past: the homeserver
    or the database unavailable (locked, busy, disk full or failing). Anything else is
    the data meeting a bug, and would fail the same way every time."""
    if isinstance(exc, (TryLater, HomeserverUnavailable, OSError, MemoryError)):
        return True
    return database_unavailable(exc)


def where(exc: BaseException) -> str:
    """The exception's class and the line that raised it, for a log line. Not its
    message: that may quote the data (``int('...')``), and data may be content."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno}"


def shown(value: object, limit: int = 80) -> str:
    """An identifier from the homeserver for a log line: quoted and cut short, so a
    newline or a megabyte in it cannot forge or flood the log."""
    if value is None:
        return "(none)"
    text = ascii(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- identifiers (is_id, storable: bot.matrix.events) ---------------------------------


def _text(value: object) -> bool:
    return isinstance(value, str) and storable(value)


# --- events ---------------------------------------------------------------------------


def clean_event(raw: object, room_id: str | None = None) -> Mapping[str, Any] | Skipped:
    """The event as the room reader may read it, or why it is skipped. ``room_id``:
    the room the event is known to belong to (a state read), when it may lack one.

    Only what the bridge reads is checked or changed; the rest is passed on as is.
    A message whose content is not an object is kept (content counts as empty): it
    is still a message to redact. A state event that is malformed is skipped."""
    if not isinstance(raw, Mapping):
        return Skipped("it is not a JSON object", None, room_id)
    event_id = raw.get("event_id")
    room = raw.get("room_id", room_id)
    shown_id = event_id if isinstance(event_id, str) else None
    shown_room = room if isinstance(room, str) else None
    if not is_id(room, "!") or (room_id is not None and room != room_id):
        return Skipped("no usable room_id", shown_id, shown_room)
    if not is_id(event_id, "$"):
        return Skipped("no usable event_id", shown_id, room)
    if not is_id(raw.get("sender"), "@"):
        return Skipped("no usable sender", event_id, room)
    kind = raw.get("type")
    if not _text(kind) or not kind:
        return Skipped("no usable type", event_id, room)
    ts = raw.get("origin_server_ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= MAX_TS:
        return Skipped("no usable origin_server_ts", event_id, room)
    event = dict(raw)
    event["room_id"] = room
    content = raw.get("content")
    if "state_key" in raw:
        state_key = raw["state_key"]
        if not _text(state_key):
            return Skipped("no usable state_key", event_id, room)
        if not isinstance(content, Mapping):
            return Skipped("its state content is not an object", event_id, room)
        if kind == "m.room.member":
            if not is_id(state_key, "@"):
                return Skipped("its state_key is not a user id", event_id, room)
            if not isinstance(content.get("membership"), str):
                return Skipped("its membership is not a string", event_id, room)
        return event
    if "redacts" in raw and not is_id(raw["redacts"], "$"):
        del event["redacts"]
    if not isinstance(content, Mapping):
        event["content"] = {}
        return event
    cleaned = dict(content)
    relation = content.get("m.relates_to")
    if relation is not None and not (isinstance(relation, Mapping) and (
            is_id(relation.get("event_id"), "$")
            # A plain reply (`!lethe expire`): read by bot/matrix/expiry.reply_target.
            or ("event_id" not in relation and "m.in_reply_to" in relation))):
        del cleaned["m.relates_to"]  # a message all the same, without its relation
    if "redacts" in content and not is_id(content["redacts"], "$"):
        del cleaned["redacts"]
    event["content"] = cleaned
    return event




# --- state contents the bridge reads ----------------------------------------------------
# Each returns what it could read and whether all of it was well-formed (the reader
# logs when not); a part of another type counts as absent, as in ``PowerState``.


def _level(value: object) -> int | None:
    """A power level as room versions allow it (an integer; before version 10 also a
    string of one) in canonical JSON's range; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _LEVEL_TEXT.fullmatch(text):
            return None
        value = int(text)
    if not isinstance(value, int) or not -_MAX_INT <= value <= _MAX_INT:
        return None
    return value


def _levels(raw: object) -> tuple[dict[str, int], bool]:
    if raw is None:
        return {}, True
    if not isinstance(raw, Mapping):
        return {}, False
    found = {}
    for key, value in raw.items():
        level = _level(value)
        if isinstance(key, str) and level is not None:
            found[key] = level
    return found, len(found) == len(raw)


def clean_power_levels(content: object) -> tuple[dict[str, Any], bool]:
    """``m.room.power_levels`` content with only its well-formed levels."""
    if not isinstance(content, Mapping):
        return {}, False
    users, users_ok = _levels(content.get("users"))
    events, events_ok = _levels(content.get("events"))
    cleaned: dict[str, Any] = {"users": users, "events": events}
    ok = users_ok and events_ok
    for key in _LEVEL_KEYS:
        if key not in content:
            continue
        level = _level(content[key])
        if level is None:
            ok = False
        else:
            cleaned[key] = level
    return cleaned, ok


def clean_create(event: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """What ``PowerState`` reads of ``m.room.create``: its sender, room version and
    additional creators (room version 12)."""
    content = event.get("content")
    ok = isinstance(content, Mapping)
    content = content if isinstance(content, Mapping) else {}
    cleaned: dict[str, Any] = {}
    version = content.get("room_version")
    if isinstance(version, str):
        cleaned["room_version"] = version
    else:
        ok = ok and version is None
    creators = content.get("additional_creators")
    if isinstance(creators, list):
        cleaned["additional_creators"] = [u for u in creators if is_id(u, "@")]
        ok = ok and len(cleaned["additional_creators"]) == len(creators)
    else:
        ok = ok and creators is None
    sender = event.get("sender")
    ok = ok and is_id(sender, "@")
    return {"sender": sender if is_id(sender, "@") else None, "content": cleaned}, ok


def clean_aliases(content: object) -> tuple[tuple[str, ...], bool]:
    """The canonical alias and its alternatives from ``m.room.canonical_alias``."""
    if not isinstance(content, Mapping):
        return (), False
    alias, alt = content.get("alias"), content.get("alt_aliases")
    ok = (alias is None or isinstance(alias, str)) and (alt is None or isinstance(alt, list))
    names = [alias, *(alt if isinstance(alt, list) else ())]
    found = tuple(a for a in names if isinstance(a, str) and a)
    ok = ok and len(found) == sum(1 for a in names if a not in (None, ""))
    return found, ok
