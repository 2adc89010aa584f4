"""The mirror of a room's policy in ``m.room.retention`` (MSC1763), which Synapse purges
by where its ``retention`` feature is on: what it says, and keeping it in step. Shared by
the bot, the bridge and `lethe policy`.

The mirror says ``{"max_lifetime": ms}``: the after_send timer, or the after_read cap
(the reading rule has no equivalent there). A policy that is off, with the mirror on,
says ``{}``: Synapse then keeps no retention policy of the room's own (its
``default_policy``, if the server has one, applies), which is what the mirror withdrawn
means too.

Who wins (no fight, no loop): Lethe writes ``m.room.retention`` only when a policy
change asks for it, never in answer to an ``m.room.retention`` event. A change of the
policy (its rule or the opt-in) overwrites whatever the event says; first sight of a
room (a join, a lost database) only fills a missing mirror or corrects Lethe's own,
never somebody else's; turning the mirror off withdraws only Lethe's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.engine.policy import Policy, format_duration
from bot.engine.power import PowerState, describe_level
from bot.matrix.api import HomeserverUnavailable, MatrixHttp

RETENTION_EVENT_TYPE = "m.room.retention"


def retention_content(policy: Policy) -> dict[str, Any]:
    """What ``m.room.retention`` says for ``policy`` (with the mirror on)."""
    lifetime = policy.max_lifetime_ms
    return {} if lifetime is None else {"max_lifetime": lifetime}


def describe_content(content: Mapping[str, Any] | None) -> str:
    lifetime = (content or {}).get("max_lifetime")
    if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0:
        return f"max_lifetime {format_duration(lifetime)}"
    return "no max_lifetime" if content is None or not content else \
        "no valid max_lifetime"


@dataclass(frozen=True)
class RetentionEvent:
    """A room's ``m.room.retention`` as it stands (``content`` None: there is none)."""

    content: Mapping[str, Any] | None = None
    sender: str | None = None
    event_id: str | None = None

    @classmethod
    def of(cls, event: Mapping[str, Any] | None) -> RetentionEvent:
        if event is None:
            return cls()
        if "type" not in event and "content" not in event:
            return cls(event)  # a server that ignored ``format=event``: the content only
        content, sender, event_id = (event.get(k) for k in ("content", "sender", "event_id"))
        return cls(content if isinstance(content, Mapping) else {},
                   sender if isinstance(sender, str) else None,
                   event_id if isinstance(event_id, str) else None)

    def says(self, content: Mapping[str, Any]) -> bool:
        """Whether it says ``content`` (no event says what ``{}`` says)."""
        return dict(self.content or {}) == dict(content)


class Outcome(StrEnum):
    NOT_MIRRORED = "not_mirrored"  # the mirror is off, and no mirror of Lethe's is left
    IN_STEP = "in_step"  # m.room.retention already says what the mirror says
    WRITTEN = "written"
    WITHDRAWN = "withdrawn"  # the mirror was turned off: Lethe's own emptied
    KEPT_OTHERS = "kept_others"  # first sight: somebody else's m.room.retention stays
    NO_POWER = "no_power"
    FAILED = "failed"


@dataclass(frozen=True)
class Mirror:
    """What keeping the mirror in step did."""

    outcome: Outcome
    wanted: Mapping[str, Any] | None  # None: the mirror is off
    found: RetentionEvent
    writer: str
    needed: int | None = None  # with NO_POWER
    level: str | None = None  # the writer's, with NO_POWER
    detail: str | None = None  # with FAILED

    @property
    def ok(self) -> bool:
        return self.outcome not in (Outcome.NO_POWER, Outcome.FAILED)

    def problem(self) -> str | None:
        """Why the room's ``m.room.retention`` does not say what the mirror says, or
        None when it does (or the mirror is off)."""
        if self.outcome is Outcome.NO_POWER:
            return (f"{self.writer} may not send {RETENTION_EVENT_TYPE} here (it needs "
                    f"power level {self.needed}, {self.writer} has {self.level}), so the "
                    "policy is not mirrored there; the policy itself is in force")
        if self.outcome is Outcome.FAILED:
            return (f"could not write {RETENTION_EVENT_TYPE} ({self.detail}); the policy "
                    "itself is in force")
        if self.outcome is Outcome.KEPT_OTHERS:
            return (f"{RETENTION_EVENT_TYPE} was set by {self.found.sender} "
                    f"({describe_content(self.found.content)}) and is left as it is until "
                    "the policy next changes")
        return None


IsOwn = Callable[[RetentionEvent], bool]


async def read_retention(http: MatrixHttp, room_id: str,
                         **params: str) -> RetentionEvent | str:
    """The room's ``m.room.retention``, or why it could not be read."""
    try:
        reply = await http.get_state(room_id, RETENTION_EVENT_TYPE, format="event", **params)
    except HomeserverUnavailable as exc:
        return str(exc)
    if reply.status == 404:
        return RetentionEvent()
    if not reply.ok:
        return f"HTTP {reply.status} {reply.errcode}".rstrip()
    return RetentionEvent.of(reply.body)


async def keep_mirror(http: MatrixHttp, room_id: str, policy: Policy, writer: str,
                      power: PowerState, *, changed: bool, is_own: IsOwn | None = None,
                      **params: str) -> Mirror:
    """Bring the room's ``m.room.retention`` in step with ``policy``, written as
    ``writer``. ``changed``: the policy was just changed (overwrite anyone's), rather than
    first seen. ``is_own``: whether an event is Lethe's own (default: sent by ``writer``).
    Never raises for the homeserver's answers: the policy change stands whatever this
    says."""
    wanted = retention_content(policy) if policy.mirror_retention else None
    found = await read_retention(http, room_id, **params)
    if isinstance(found, str):
        return Mirror(Outcome.FAILED, wanted, RetentionEvent(), writer, detail=found)
    own = (is_own or (lambda e: e.sender == writer))(found)
    if wanted is None:
        if found.says({}) or not own:
            return Mirror(Outcome.NOT_MIRRORED, None, found, writer)
        target: Mapping[str, Any] = {}
    elif found.says(wanted):
        return Mirror(Outcome.IN_STEP, wanted, found, writer)
    elif not changed and not found.says({}) and not own:
        return Mirror(Outcome.KEPT_OTHERS, wanted, found, writer)
    else:
        target = wanted
    if not power.can_send_state(writer, RETENTION_EVENT_TYPE):
        return Mirror(Outcome.NO_POWER, wanted, found, writer,
                      needed=power.needed_for_state(RETENTION_EVENT_TYPE),
                      level=describe_level(power.level(writer)))
    try:
        reply = await http.put_state(room_id, RETENTION_EVENT_TYPE, target, **params)
    except HomeserverUnavailable as exc:
        return Mirror(Outcome.FAILED, wanted, found, writer, detail=str(exc))
    if not reply.ok:
        return Mirror(Outcome.FAILED, wanted, found, writer,
                      detail=f"HTTP {reply.status} {reply.errcode}".rstrip())
    event_id = reply.body.get("event_id")
    written = RetentionEvent(target, writer, event_id if isinstance(event_id, str) else None)
    return Mirror(Outcome.WRITTEN if wanted is not None else Outcome.WITHDRAWN,
                  wanted, written, writer)


def mirror_status(policy: Policy, found: RetentionEvent, power: PowerState,
                  writer: str) -> str:
    """One line for `!lethe status` and `lethe policy show`: whether the room's
    ``m.room.retention`` says what the mirror says, and if not, why."""
    there = (f"{RETENTION_EVENT_TYPE} says {describe_content(found.content)}"
             + (f" (set by {found.sender})" if found.sender else ""))
    if found.content is None:
        there = f"no {RETENTION_EVENT_TYPE} in the room"
    if not policy.mirror_retention:
        return f"off; {there}"
    wanted = retention_content(policy)
    if found.says(wanted):
        return f"on, in step: {there}"
    line = f"on, NOT in step: {there}, the policy says {describe_content(wanted)}"
    if not power.can_send_state(writer, RETENTION_EVENT_TYPE):
        line += (f"; {writer} may not send it (needs power level "
                 f"{power.needed_for_state(RETENTION_EVENT_TYPE)}, has "
                 f"{describe_level(power.level(writer))})")
    return line
