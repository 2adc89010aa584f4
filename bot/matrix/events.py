"""Translate raw Matrix event JSON into engine values. No nio, no I/O: the bot and the
bridge both use it. Malformed events become None (ignored), never an exception.
Message content is looked at only for relations (``m.relates_to``, which stays in
clear text even in encrypted rooms), for the ids of the files it points at and for
its own timer (``com.beeper.disappearing_timer``; both in encrypted rooms once
decrypted), and is never copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bot.engine.model import (
    Marker,
    MediaRef,
    MemberChange,
    Message,
    PolicyEvent,
    Receipt,
    Redaction,
    TimelineItem,
)
from bot.engine.msgtimer import parse_timer
from bot.engine.policy import POLICY_STATE_TYPES

# Relations whose event only makes sense with its target and would leak it if left
# behind: edits (carry the new text), reactions, and poll responses and ends (and the
# other uses of m.reference). They go with their target when Lethe expires it. A
# thread reply (m.thread) is not among them: it is a message of its own.
_PARENT_RELATIONS = ("m.replace", "m.annotation", "m.reference")
# Where a homeserver shows the sender of an event sent from a delayed event its id.
DELAY_ID_KEY = "org.matrix.msc4140.delay_id"
# The largest integer canonical JSON allows: no real event carries a larger timestamp,
# and one that did would overflow the due time stored in SQLite.
MAX_TS = 2**53 - 1
# The files of one message: a file and its thumbnail, in the content and in an edit's
# m.new_content. Only these fixed places are read, so this also bounds what a hostile
# event can make Lethe store.
MAX_MEDIA_PER_EVENT = 8
# A server name (hostname, IPv4 or [IPv6], optional port) and a media id as the spec
# allows them; anything else is not a file Lethe would ask the homeserver to delete.
_SERVER_NAME = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?")
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _ts(value: object) -> int | None:
    """A timestamp as Matrix allows it (canonical JSON: an integer, here not negative)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TS:
        return value
    return None


def _relation(content: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(thread_id, parent_id) from ``m.relates_to``: a thread reply names its root as
    its thread (for threaded receipts) but has no parent; an edit, reaction or
    reference has a parent."""
    rel = content.get("m.relates_to")
    if not isinstance(rel, Mapping):
        return None, None
    rel_type = rel.get("rel_type")
    target = _str(rel.get("event_id"))
    if target is None:
        return None, None
    if rel_type == "m.thread":
        return target, None
    if rel_type in _PARENT_RELATIONS:
        return None, target
    return None, None


def parse_mxc(value: object) -> MediaRef | None:
    """``mxc://server/media_id``, both parts checked; None for anything else."""
    if not isinstance(value, str) or not value.startswith("mxc://"):
        return None
    server, slash, media_id = value[len("mxc://"):].partition("/")
    if not slash or not _SERVER_NAME.fullmatch(server) or not _MEDIA_ID.fullmatch(media_id):
        return None
    return MediaRef(server, media_id)


def media_refs(content: Mapping[str, Any]) -> tuple[MediaRef, ...]:
    """The files a message's content points at: ``url`` (a plain upload, a sticker),
    ``file.url`` (an encrypted attachment), ``info.thumbnail_url`` and
    ``info.thumbnail_file.url``, and the same in an edit's ``m.new_content``."""
    found: list[MediaRef] = []
    for block in (content, content.get("m.new_content")):
        if not isinstance(block, Mapping):
            continue
        info = block.get("info")
        info = info if isinstance(info, Mapping) else {}
        for value in (block.get("url"), _url_of(block.get("file")),
                      info.get("thumbnail_url"), _url_of(info.get("thumbnail_file"))):
            ref = parse_mxc(value)
            if ref is not None and ref not in found:
                found.append(ref)
    return tuple(found[:MAX_MEDIA_PER_EVENT])


def _url_of(file: object) -> object:
    return file.get("url") if isinstance(file, Mapping) else None


def redacted_by(event: Mapping[str, Any]) -> str | None:
    """The sender of the redaction that pruned ``event`` ("" if not named), or None if
    it is not redacted. Homeservers put the redaction in ``unsigned.redacted_because``
    (very old ones at the top level)."""
    unsigned = event.get("unsigned")
    because = unsigned.get("redacted_because") if isinstance(unsigned, Mapping) else None
    if because is None:
        because = event.get("redacted_because")
    if not because:
        return None
    sender = because.get("sender") if isinstance(because, Mapping) else None
    return sender if isinstance(sender, str) else ""


def is_redacted(event: Mapping[str, Any]) -> bool:
    """Whether an event fetched again is redacted: marked so, or its content pruned."""
    unsigned = event.get("unsigned")
    if isinstance(unsigned, Mapping) and unsigned.get("redacted_because"):
        return True
    return not event.get("content")


ENCRYPTED = "m.room.encrypted"


def as_encrypted(event: Mapping[str, Any], content: object) -> dict[str, Any]:
    """An encrypted event with its decrypted ``content``, as Lethe reads it: always a
    message, never redacted (it could be decrypted). State events and redactions are
    never encrypted; a type, state key, ``redacts`` or ``unsigned`` that only the
    ciphertext claims would let any sender forge one (a redaction that cancels
    somebody's expiry, a membership or power change, a message marked as redacted
    that is then never tracked)."""
    plain = {k: v for k, v in event.items() if k not in ("state_key", "redacts", "unsigned")}
    plain["type"] = ENCRYPTED
    plain["content"] = content if isinstance(content, Mapping) else {}
    return plain


def to_item(event: Mapping[str, Any], *, in_timeline: bool = True) -> TimelineItem | None:
    event_id = _str(event.get("event_id"))
    sender = _str(event.get("sender"))
    event_type = _str(event.get("type"))
    ts = _ts(event.get("origin_server_ts"))
    if event_id is None or sender is None or event_type is None or ts is None:
        return None
    raw_content = event.get("content")
    content: Mapping[str, Any] = raw_content if isinstance(raw_content, Mapping) else {}
    position = event_id if in_timeline else None
    if "state_key" in event:
        state_key = event.get("state_key")
        if event_type == "m.room.member" and isinstance(state_key, str):
            membership = content.get("membership")
            if membership == "join":
                return MemberChange(state_key, True, position)
            if membership in ("leave", "ban"):
                return MemberChange(state_key, False, position)
        elif event_type in POLICY_STATE_TYPES and state_key == "":
            return PolicyEvent(event_type, sender, ts, dict(content), in_timeline, position,
                               redacted_by=redacted_by(event))
        return Marker(event_id) if in_timeline else None
    if not in_timeline:
        return None
    unsigned = event.get("unsigned")
    if event_type == "m.room.redaction":
        target = _str(event.get("redacts")) or _str(content.get("redacts"))
        if not target:
            return Marker(event_id)
        # Shown to its sender only: the delayed event (MSC4140) it was sent from.
        delay_id = _str(unsigned.get(DELAY_ID_KEY)) if isinstance(unsigned, Mapping) else None
        return Redaction(target, event_id, sender, delay_id)
    if isinstance(unsigned, Mapping) and unsigned.get("redacted_because"):
        return Marker(event_id)  # already redacted: nothing left to do
    thread_id, parent_id = _relation(content)
    # An edit carries no timer of its own: it goes with the message it edits.
    timer = None if _is_edit(content) else parse_timer(content)
    return Message(event_id, sender, ts, thread_id, parent_id, media_refs(content), timer)


def _is_edit(content: Mapping[str, Any]) -> bool:
    rel = content.get("m.relates_to")
    return isinstance(rel, Mapping) and rel.get("rel_type") == "m.replace"


def to_items(
    events: Iterable[Mapping[str, Any]], *, in_timeline: bool = True
) -> list[TimelineItem]:
    items = []
    for event in events:
        item = to_item(event, in_timeline=in_timeline)
        if item is not None:
            items.append(item)
    return items


def storable(text: str) -> bool:
    """SQLite cannot store lone surrogates, which JSON escapes can carry."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_id(value: object, sigil: str) -> bool:
    """A Matrix identifier with its sigil (``$`` event, ``!`` room, ``@`` user) that
    SQLite can store. Room ids of room version 12 have no server part."""
    if not isinstance(value, str) or len(value) < 2 or value[0] != sigil:
        return False
    if sigil == "@" and ":" not in value:
        return False
    return storable(value)


def clean_receipts(content: object) -> tuple[list[Receipt], int]:
    """The usable public receipts of one ``m.receipt`` EDU's content, each read on its
    own, and how many others it held (left out). A malformed receipt from a remote
    server costs only itself, never its neighbours. One with a ``thread_id`` that is
    not a usable string is left out rather than read as unthreaded, which would cover
    every thread. A timestamp that is not one only loses the timestamp."""
    found: list[Receipt] = []
    bad = 0
    if not isinstance(content, Mapping):
        return found, 0
    for event_id, by_type in content.items():
        # Shapes that hold no receipt at all are passed over, as receipts_from_content
        # does; only receipts that are there and unusable count as left out.
        readers = by_type.get("m.read") if isinstance(by_type, Mapping) else None
        if not isinstance(readers, Mapping):
            continue
        for user_id, info in readers.items():
            info = info if isinstance(info, Mapping) else {}
            thread = info.get("thread_id")
            if not (is_id(user_id, "@") and is_id(event_id, "$")) or (
                    thread is not None and not (_str(thread) and storable(thread))):
                bad += 1
                continue
            found.append(Receipt(user_id, event_id, thread, _ts(info.get("ts"))))
    return found, bad


def receipts_from_ephemeral(events: object) -> tuple[list[Receipt], int]:
    """The usable public receipts of a room's ephemeral events as the client-server
    ``/sync`` JSON carries them (``rooms.join.ROOM.ephemeral.events``), and how many
    malformed receipts (or receipt EDUs) were left out."""
    found: list[Receipt] = []
    bad = 0
    if not isinstance(events, list):
        return found, 1 if events is not None else 0
    for edu in events:
        if not isinstance(edu, Mapping) or edu.get("type") != "m.receipt":
            continue  # typing and the like: not Lethe's business
        content = edu.get("content")
        if not isinstance(content, Mapping):
            bad += 1
            continue
        usable, skipped = clean_receipts(content)
        found.extend(usable)
        bad += skipped
    return found, bad


def ephemeral_by_room(sync_body: object) -> dict[str, object]:
    """``rooms.join.ROOM.ephemeral.events`` of a raw ``/sync`` body, by room."""
    found: dict[str, object] = {}
    rooms = sync_body.get("rooms") if isinstance(sync_body, Mapping) else None
    joined = rooms.get("join") if isinstance(rooms, Mapping) else None
    if not isinstance(joined, Mapping):
        return found
    for room_id, info in joined.items():
        ephemeral = info.get("ephemeral") if isinstance(info, Mapping) else None
        if isinstance(room_id, str) and isinstance(ephemeral, Mapping):
            found[room_id] = ephemeral.get("events")
    return found


def receipts_from_content(content: object) -> list[Receipt]:
    """The usable public receipts of an ``m.receipt`` EDU's content (clean_receipts,
    without the count of those left out)."""
    return clean_receipts(content)[0]
