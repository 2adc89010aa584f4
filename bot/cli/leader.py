"""Which process is active on a PostgreSQL database (the standby's lock,
bot/engine/store/leader.py), as `lethe doctor` and `lethe bridge status` say it."""

from __future__ import annotations

import time
from typing import Any

from bot.cli.output import relative
from bot.engine.store import LockHolder


def holder_text(holder: LockHolder | None, role: str) -> str:
    if holder is None:
        return (f"no lethe {role} holds the lock: none is active on this database (a "
                "standby takes it within a second of starting)")
    since_ms = int(holder.since.timestamp() * 1000)
    return (f"held by {holder.application_name} from {holder.client}, connected "
            f"{relative(since_ms, int(time.time() * 1000))}; any other is a standby")


def holder_json(holder: LockHolder | None) -> dict[str, Any] | None:
    if holder is None:
        return None
    return {"application_name": holder.application_name, "client": holder.client,
            "since": holder.since.isoformat()}
