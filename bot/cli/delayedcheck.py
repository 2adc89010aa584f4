"""`lethe doctor`'s check of delayed redactions: does the homeserver redact each
message at its deadline by itself, even while Lethe is stopped (bot/engine/delayed.py),
and if not, why; and how many messages it holds one for."""

from __future__ import annotations

from typing import Any

from bot.cli.census import delayed_summary
from bot.cli.context import readonly_store
from bot.config import Config
from bot.engine.delayed import DISABLED
from bot.matrix.delayed import support_from_versions

OK, WARN = "ok", "warn"
NAME = "delayed redactions"


async def delayed_check(config: Config, versions: dict[str, Any] | None) -> tuple[str, str]:
    """(status, detail); ``versions`` is the homeserver's /versions (None: no answer)."""
    armed = ""
    if not config.database.absent:
        async with readonly_store(config, required=False) as store:
            if store is not None:
                summary = await delayed_summary(store)
                armed = f"; {summary.armed} message(s) scheduled with the homeserver now"
                if summary.cancels:
                    armed += f", {summary.cancels} cancellation(s) still to send"
    if not config.delayed_redactions:
        return OK, (f"not in use: {DISABLED}, so messages due while Lethe is stopped are "
                    f"redacted when it is back{armed}")
    if versions is None:
        return WARN, f"unknown: the homeserver did not answer{armed}"
    support = support_from_versions(versions)
    if support.offered:
        return OK, ("in use: the homeserver redacts each message at its deadline by "
                    f"itself, even while Lethe is stopped{armed}")
    return WARN, (f"not in use: {support.reason}. Until then, messages due while Lethe is "
                  f"stopped are redacted when it is back{armed}")
