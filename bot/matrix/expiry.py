"""``!lethe expire DUR`` sent as a reply: finding the message it names and deciding
whether its sender may shorten that message's life. Shared by the bot and the bridge;
no nio.

The target is fetched through the client-server API in the command's own room, so a
reply naming an event of another room (forged: the reply's ``event_id`` is whatever
its sender wrote) is not found, and its sender and time come from the homeserver, not
from the command. A member may shorten the life of their own messages; a moderator
(who may redact others' messages) anybody's. Nothing here lengthens a deadline: the
engine keeps the earlier one (Engine.expire_event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bot.engine.model import Message
from bot.engine.power import PowerState
from bot.matrix.api import MatrixHttp
from bot.matrix.events import MAX_TS, is_id, is_redacted, to_item

if TYPE_CHECKING:
    from bot.engine.engine import Engine
    from bot.engine.msgtimer import Expiry

# Pages of 100 of a target's relations read at most (a reaction flood stays bounded).
_FOLLOWER_PAGES = 5


def reply_target(content: Mapping[str, Any]) -> str | None:
    """``m.relates_to.m.in_reply_to.event_id`` (in encrypted rooms, of the decrypted
    content, which nio completes with the clear relation), if it is an event id."""
    rel = content.get("m.relates_to")
    reply = rel.get("m.in_reply_to") if isinstance(rel, Mapping) else None
    target = reply.get("event_id") if isinstance(reply, Mapping) else None
    return target if is_id(target, "$") else None


@dataclass(frozen=True)
class Target:
    """The message a reply names, as the homeserver has it."""

    event_id: str
    sender: str
    origin_ts: int


class Refusal(StrEnum):
    NO_REPLY = "no_reply"  # the command is not a reply
    NOT_FOUND = "not_found"  # not an event of this room (or not visible to Lethe)
    GONE = "gone"  # redacted already
    NOT_A_MESSAGE = "not_a_message"  # a state event: not Lethe's to redact
    NOT_YOURS = "not_yours"  # somebody else's, and the requester is no moderator
    UNREACHABLE = "unreachable"  # the homeserver did not answer


async def find_target(http: MatrixHttp, room_id: str, event_id: str,
                      **params: str) -> Target | Refusal:
    """The target of a reply, fetched in ``room_id`` (``params``: e.g. an appservice's
    ``user_id`` to ask as)."""
    try:
        reply = await http.event(room_id, event_id, **params)
    except OSError:
        return Refusal.UNREACHABLE
    if reply.status in (400, 403, 404):
        return Refusal.NOT_FOUND
    if not reply.ok:
        return Refusal.UNREACHABLE
    event = reply.body
    sender, ts = event.get("sender"), event.get("origin_server_ts")
    if (event.get("room_id") not in (None, room_id) or event.get("event_id") != event_id
            or not is_id(sender, "@") or not isinstance(ts, int) or isinstance(ts, bool)
            or not 0 <= ts <= MAX_TS):
        return Refusal.NOT_FOUND
    if "state_key" in event or event.get("type") == "m.room.redaction":
        return Refusal.NOT_A_MESSAGE
    if is_redacted(event):
        return Refusal.GONE
    assert isinstance(sender, str)
    return Target(event_id, sender, ts)


async def followers(http: MatrixHttp, target: Target, room_id: str,
                    **params: str) -> list[Target]:
    """The events that go with ``target`` (its edits, reactions, references: those a
    tracked parent takes along), as the homeserver lists them; at most
    ``_FOLLOWER_PAGES`` pages, and none if it does not answer (the target still goes)."""
    found: list[Target] = []
    since: str | None = None
    for _ in range(_FOLLOWER_PAGES):
        query = {**params, "limit": "100", **({"from": since} if since else {})}
        try:
            reply = await http.relations(room_id, target.event_id, **query)
        except OSError:
            break
        chunk = reply.body.get("chunk") if reply.ok else None
        for event in chunk if isinstance(chunk, list) else ():
            item = to_item(event) if isinstance(event, Mapping) else None
            if isinstance(item, Message) and item.parent_id == target.event_id:
                found.append(Target(item.event_id, item.sender, item.origin_ts))
        since = reply.body.get("next_batch") if reply.ok else None
        if not isinstance(since, str):
            break
    return found


def may_expire(power: PowerState, requester: str, target_sender: str) -> bool:
    """Their own message, or anybody's for one who may redact others' messages."""
    return requester == target_sender or power.can_redact_others(requester)


async def expire_with_followers(engine: Engine, http: MatrixHttp, room_id: str,
                                target: Target, command: Target, due_ms: int,
                                **params: str) -> Expiry:
    """``target``, what follows it (also what was sent before it was tracked) and the
    ``command`` itself, each due at ``due_ms`` unless due sooner; what became of the
    target. ``params``: the bridge's ``user_id``, to ask as the command's sender."""
    result = await engine.expire_event(room_id, target.event_id, due_ms,
                                       untracked=(target.sender, target.origin_ts))
    for event in [*await followers(http, target, room_id, **params), command]:
        await engine.expire_event(room_id, event.event_id, due_ms,
                                  untracked=(event.sender, event.origin_ts))
    return result
