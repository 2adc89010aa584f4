"""Translate raw Matrix event JSON into engine values. No nio, no I/O: the bot and the
bridge both use it. Malformed events become None (ignored), never an exception.
Message content is looked at only for relations (``m.relates_to``, which stays in
clear text even in encrypted rooms) and is never copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bot.engine.model import (
    Marker,
    MemberChange,
    Message,
    PolicyEvent,
    Receipt,
    Redaction,
    TimelineItem,
)
from bot.engine.policy import POLICY_STATE_TYPES

# Relations whose event only makes sense with its target and would leak it if left
# behind: edits (carry the new text), reactions, and poll responses and ends (and the
# other uses of m.reference). They go with their target when Lethe expires it. A
# thread reply (m.thread) is not among them: it is a message of its own.
_PARENT_RELATIONS = ("m.replace", "m.annotation", "m.reference")
# The largest integer canonical JSON allows: no real event carries a larger timestamp,
# and one that did would overflow the due time stored in SQLite.
MAX_TS = 2**53 - 1


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
            return PolicyEvent(event_type, sender, ts, dict(content), in_timeline, position)
        return Marker(event_id) if in_timeline else None
    if not in_timeline:
        return None
    if event_type == "m.room.redaction":
        target = _str(event.get("redacts")) or _str(content.get("redacts"))
        return Redaction(target, event_id, sender) if target else Marker(event_id)
    unsigned = event.get("unsigned")
    if isinstance(unsigned, Mapping) and unsigned.get("redacted_because"):
        return Marker(event_id)  # already redacted: nothing left to do
    thread_id, parent_id = _relation(content)
    return Message(event_id, sender, ts, thread_id, parent_id)


def to_items(
    events: Iterable[Mapping[str, Any]], *, in_timeline: bool = True
) -> list[TimelineItem]:
    items = []
    for event in events:
        item = to_item(event, in_timeline=in_timeline)
        if item is not None:
            items.append(item)
    return items


def receipts_from_content(content: object) -> list[Receipt]:
    """Public ``m.read`` receipts from an ``m.receipt`` EDU's content. Private receipts
    (``m.read.private``) never reach the bot, and would not count if they did."""
    found: list[Receipt] = []
    if not isinstance(content, Mapping):
        return found
    for event_id, by_type in content.items():
        if not isinstance(event_id, str) or not isinstance(by_type, Mapping):
            continue
        readers = by_type.get("m.read")
        if not isinstance(readers, Mapping):
            continue
        for user_id, info in readers.items():
            if not isinstance(user_id, str):
                continue
            info = info if isinstance(info, Mapping) else {}
            thread = _str(info.get("thread_id"))
            found.append(Receipt(user_id, event_id, thread, _ts(info.get("ts"))))
    return found
