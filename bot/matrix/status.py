"""The text of `!lethe status`: policy, whether it can be enforced, and what is pending."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.engine.engine import RoomStatus
from bot.engine.power import PowerState, describe_level


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_text(status: RoomStatus | None, power: PowerState, bot_user_id: str) -> str:
    if status is None:
        return "I have not seen this room's state yet; try again in a moment."
    lines = [f"Policy: {status.policy.describe()}"]
    if status.policy_sender:
        lines[0] += f", set by {status.policy_sender}"
    level = power.level(bot_user_id)
    if power.can_redact_others(bot_user_id):
        lines.append(f"Enforcement: yes (my power level {describe_level(level)}, "
                     f"redacting needs {power.redact})")
    else:
        lines.append(f"Enforcement: NO, I cannot redact other people's messages: my power level "
                     f"is {describe_level(level)}, redacting needs {power.redact}")
    pending = f"Pending: {status.pending} message(s)"
    if status.next_due is not None:
        pending += f", next due {_when(status.next_due)}"
    lines.append(pending)
    lines.append(f"Redacted so far: {status.redacted}" +
                 (f"; unconfirmed failures: {status.failed}" if status.failed else ""))
    return "\n".join(lines)
