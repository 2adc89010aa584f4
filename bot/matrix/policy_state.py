"""Writing a room's retention policy into its state, shared by the in-room command
and `lethe policy set|clear`.

Both events are written, Lethe's own first: it carries the whole policy, and the
Beeper event that follows mirrors its rule, so readers of either agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from bot.engine.model import PolicyEvent
from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, POLICY_STATE_TYPES, Policy
from bot.engine.power import PowerState, describe_level
from bot.matrix.api import HomeserverUnavailable, MatrixHttp


class PolicyWriteFailed(RuntimeError):
    """The homeserver did not take a policy state event."""


@dataclass(frozen=True)
class MissingPower:
    """``user_id`` may not send ``event_type``, which needs ``needed``."""

    event_type: str
    needed: int


def missing_policy_power(power: PowerState, user_id: str) -> MissingPower | None:
    """Whether ``user_id`` lacks the power to send either policy state event."""
    for event_type in POLICY_STATE_TYPES:
        if not power.can_send_state(user_id, event_type):
            return MissingPower(event_type, power.needed_for_state(event_type))
    return None


def policy_refusal(power: PowerState, sender: str) -> str | None:
    """Why ``sender`` may not change the policy, or None if they may.

    One rule for both ways of changing it, the in-room command and the state events
    themselves: the sender must be allowed to send *both* policy state events. The
    homeserver lets anyone allowed to send either one write it, so a policy event from
    someone who may send only one is refused here, as their command would be. The
    bot's own writes pass: it writes only after checking that it may send both."""
    missing = missing_policy_power(power, sender)
    if missing is None:
        return None
    return (f"changing the retention policy needs the power to send both "
            f"{POLICY_STATE_TYPES[0]} and {POLICY_STATE_TYPES[1]}; {missing.event_type} "
            f"needs power level {missing.needed}, {sender} has "
            f"{describe_level(power.level(sender))}")


async def write_policy(http: MatrixHttp, room_id: str, policy: Policy,
                       **params: str) -> tuple[str, ...]:
    """PUT both state events; returns their event ids. ``params``: the bridge's
    ``user_id``, to write as a local user."""
    event_ids: list[str] = []
    for event_type, content in (
        (POLICY_EVENT_TYPE, policy.to_state()),
        (BEEPER_EVENT_TYPE, policy.to_beeper()),
    ):
        try:
            reply = await http.put_state(room_id, event_type, content, **params)
        except HomeserverUnavailable as exc:
            raise PolicyWriteFailed(f"{event_type}: {exc}") from None
        if not reply.ok:
            raise PolicyWriteFailed(
                f"{event_type}: HTTP {reply.status} {reply.errcode}".rstrip()
            )
        event_id = reply.body.get("event_id")
        if isinstance(event_id, str):
            event_ids.append(event_id)
    return tuple(event_ids)


OWN_WRITES_KEY = "own_policy_writes"  # meta: the policy events this bot wrote, by id
OWN_WRITES_KEPT = 64


class OwnWrites:
    """The policy state events the bot wrote for commands, with their content.

    They tell a command's own write coming back (announced when it was made) from a
    change made with the bot's account elsewhere (`lethe policy set`). And they keep
    the content: a moderator may redact the events before the bot's sync brings them
    back, even across a restart, and a redacted policy event is not an "off". Kept in
    the database's meta table, the last OWN_WRITES_KEPT."""

    def __init__(self, raw: str | None = None) -> None:
        self._writes: dict[str, object] = {}
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if isinstance(data, dict):
            self._writes = {k: v for k, v in data.items() if isinstance(k, str)}

    def add(self, event_ids: tuple[str, ...], policy: Policy) -> None:
        for event_id, content in zip(event_ids, (policy.to_state(), policy.to_beeper()),
                                     strict=False):
            self._writes[event_id] = content
        while len(self._writes) > OWN_WRITES_KEPT:
            del self._writes[next(iter(self._writes))]

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._writes

    def restore(self, item: PolicyEvent) -> PolicyEvent:
        """A redacted policy event the bot wrote, with the content it wrote."""
        if item.redacted_by is None or item.event_id not in self._writes:
            return item
        return replace(item, content=self._writes[item.event_id], redacted_by=None)

    def to_json(self) -> str:
        return json.dumps(self._writes)
