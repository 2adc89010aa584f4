"""Reading and writing one state event of a room the way the visible-timer modules
(pins, roomfeatures, topic) need it: problems as short texts, never exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.matrix.api import HomeserverUnavailable, MatrixHttp


class StateProblem(str):
    """Why a state event could not be read or written (a short text)."""


async def read_state(http: MatrixHttp, room_id: str, event_type: str
                     ) -> Mapping[str, Any] | StateProblem | None:
    """The event's content; None if the room has none; or why it could not be read."""
    try:
        reply = await http.get_state(room_id, event_type)
    except HomeserverUnavailable as exc:
        return StateProblem(exc)
    if reply.status == 404:
        return None
    if not reply.ok:
        return StateProblem(f"reading {event_type}: HTTP {reply.status} {reply.errcode}"
                            .rstrip())
    return reply.body


async def write_state(http: MatrixHttp, room_id: str, event_type: str,
                      content: Mapping[str, Any]) -> StateProblem | None:
    """PUT the event; None, or why the homeserver did not take it."""
    try:
        reply = await http.put_state(room_id, event_type, content)
    except HomeserverUnavailable as exc:
        return StateProblem(exc)
    if reply.ok:
        return None
    return StateProblem(f"writing {event_type}: HTTP {reply.status} {reply.errcode}".rstrip())
