"""Writing a room's retention policy into its state, shared by the in-room command
and `lethe policy set|clear`.

Both events are written, Lethe's own first: it carries the whole policy, and the
Beeper event that follows mirrors its rule, so readers of either agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, POLICY_STATE_TYPES, Policy
from bot.engine.power import PowerState
from bot.matrix.http import HomeserverUnavailable, MatrixHttp


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


async def write_policy(http: MatrixHttp, room_id: str, policy: Policy) -> tuple[str, ...]:
    """PUT both state events; returns their event ids."""
    event_ids: list[str] = []
    for event_type, content in (
        (POLICY_EVENT_TYPE, policy.to_state()),
        (BEEPER_EVENT_TYPE, policy.to_beeper()),
    ):
        try:
            reply = await http.put_state(room_id, event_type, content)
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
