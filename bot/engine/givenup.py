"""Rooms whose schedule was dropped with redactions still on it (the bot was kicked,
banned or left): kept in the database's meta table, so `lethe rooms list` can show
them after the room itself is gone from Lethe's view. Only ids, counts and times."""

from __future__ import annotations

import json
from dataclasses import dataclass

META_KEY = "given_up_rooms"
KEPT = 100  # the most recent rooms; older entries are dropped


@dataclass(frozen=True)
class GivenUpRoom:
    room_id: str
    left_at_ms: int
    given_up: int  # scheduled redactions dropped with the room
    next_due_ms: int | None  # the earliest of them


def load_given_up(raw: str | None) -> list[GivenUpRoom]:
    """Newest last; a damaged value reads as empty (it is only a report)."""
    try:
        data = json.loads(raw) if raw else []
    except ValueError:
        return []
    found = []
    for item in data if isinstance(data, list) else []:
        try:
            found.append(GivenUpRoom(str(item["room_id"]), int(item["left_at_ms"]),
                                     int(item["given_up"]),
                                     None if item.get("next_due_ms") is None
                                     else int(item["next_due_ms"])))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def dump_given_up(rooms: list[GivenUpRoom], added: GivenUpRoom) -> str:
    others = [r for r in rooms if r.room_id != added.room_id]
    kept = [*others[-(KEPT - 1):], added]
    return json.dumps([
        {"room_id": r.room_id, "left_at_ms": r.left_at_ms, "given_up": r.given_up,
         "next_due_ms": r.next_due_ms}
        for r in kept
    ])
