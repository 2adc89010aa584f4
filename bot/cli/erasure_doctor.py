"""`lethe doctor`'s erasure section: what the operator must set in homeserver.yaml
for redacted messages to be gone from the server, and, with a homeserver admin's
token, what this server actually does, measured on a sample of Lethe's erasure
ledger (its oldest and newest entries)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.cli.checks import FAIL, OK, WARN
from bot.cli.context import readonly_store
from bot.cli.erasure import (
    TOKEN_HELP,
    NotAnAdmin,
    Stored,
    TokenRefused,
    admin_http,
    ask_all,
)
from bot.config import Config
from bot.engine.model import Erasure
from bot.engine.policy import format_duration
from bot.engine.store import StoreError
from bot.matrix.api import HomeserverUnavailable

SAMPLE_EACH = 10  # the oldest and the newest this many of the ledger

RETENTION_ADVICE = (
    "Synapse keeps the original of every redacted event in its database for "
    "redaction_retention_period (7 days by default; null keeps them forever) and "
    "prunes it within 5 minutes after (its cleanup runs every 5 minutes); uploaded "
    "files stay until deleted, or until media_retention's local_media_lifetime (and "
    "remote_media_lifetime for other servers' files) passes without a download. The "
    "client API cannot tell what this homeserver uses. For redacted messages to be gone "
    "from the server, set in homeserver.yaml e.g.:  redaction_retention_period: 1h  "
    "(a server admin then has that hour to review reported abuse)"
)
NO_TOKEN = (
    "no homeserver admin token: Lethe cannot see what the server still stores, media "
    "outlive their messages, and the originals stay for the server's "
    f"redaction_retention_period. To let Lethe measure and prove it, {TOKEN_HELP} "
    "(then `lethe audit ROOM --erasure`, `lethe purge ROOM --older-than DUR --hard`)"
)

Add = Callable[[str, str, str], None]


async def erasure_checks(config: Config, add: Add, *, admin_ok: bool) -> None:
    """``admin_ok``: the homeserver took the admin token as an admin's (the doctor's
    admin token check, mediacheck.admin_token_check, says so or why not)."""
    add("retention", WARN, RETENTION_ADVICE)
    erasure = config.erasure
    if erasure.admin_token is None:
        add("erasure", WARN, NO_TOKEN)
        return
    if not admin_ok:
        return
    try:
        async with admin_http(config.homeserver.url, erasure, "measuring erasure") as http:
            sample = await _sample(config)
            if not sample:
                add("erasure", OK, "nothing in Lethe's erasure ledger yet: nothing to measure "
                                   "(run it again once Lethe has redacted messages)")
                return
            stored = await ask_all(http, sample, erasure)
    except (NotAnAdmin, TokenRefused) as exc:
        add("erasure", FAIL, str(exc))
        return
    except HomeserverUnavailable as exc:
        add("erasure", FAIL, f"the homeserver stopped answering: {exc}")
        return
    status, detail = measure(sample, stored, erasure.max_held_ms, int(time.time() * 1000))
    add("erasure", status, detail)


async def _sample(config: Config) -> list[Erasure]:
    try:
        async with readonly_store(config, required=False) as store:
            return [] if store is None else await store.ledger_sample(SAMPLE_EACH)
    except StoreError:
        return []  # the database check says why


def measure(sample: list[Erasure], stored: dict[str, Stored], max_held_ms: int,
            now_ms: int) -> tuple[str, str]:
    """What the sample says the server does: how long it keeps originals at least, and
    within how long it erased them."""
    def ages(*states: Stored) -> list[int]:
        return [now_ms - e.redacted_at for e in sample if stored.get(e.event_id) in states]

    # Purged events went by an admin's purge, not by the server's own pruning: counted,
    # but they say nothing about redaction_retention_period.
    held, gone = ages(Stored.HELD), ages(Stored.ERASED)
    counts = ", ".join(f"{n} {s.value}" for s in Stored
                       if (n := sum(v is s for v in stored.values())))
    parts = [f"of {len(sample)} event(s) Lethe redacted (the oldest and newest in its "
             f"ledger): {counts}"]
    if held:
        parts.append(f"originals of events redacted {format_duration(max(held))} ago are "
                     "still stored: the server keeps them at least that long")
    if gone:
        parts.append(f"originals of events redacted {format_duration(min(gone))} ago are "
                     f"erased already: the server prunes them within "
                     f"{format_duration(min(gone))}")
    if held and max(held) > max_held_ms:
        return FAIL, "; ".join(parts) + (f"; that is longer than erasure.max_held "
                                         f"({format_duration(max_held_ms)}): lower "
                                         "redaction_retention_period")
    return (WARN if held else OK), "; ".join(parts)
