"""The value of a held event (a pinned policy notice exempt from expiry, see
bot/engine/holds.py), as the store returns it."""

from __future__ import annotations

from dataclasses import dataclass

from bot.engine.policy import Policy


@dataclass(frozen=True)
class HeldEvent:
    """``rule``: the policy the event was sent under; None while its echo has not been
    seen (it is then not tracked either). ``sent_at``: its send time as Lethe bounds
    it."""

    event_id: str
    room_id: str
    sender: str | None = None
    seq: int | None = None
    origin_ts: int | None = None
    sent_at: int | None = None
    thread_id: str | None = None
    rule: Policy | None = None
