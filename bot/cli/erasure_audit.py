"""`lethe audit ROOM --erasure`: for every event Lethe redacted in ROOM (its erasure
ledger), does the homeserver still store the original? Asked with a homeserver
admin's token, for the bot's database or (``--bridge``) the bridge's.

Exit 1 when an original (or a local file) is still stored longer than the bound
after Lethe redacted it, or the homeserver could not say for some event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import click

from bot.cli.common import EXIT_CHECK_FAILED, cli_config, config_path, run_async
from bot.cli.context import room_id_of
from bot.cli.erasure import (
    Findings,
    MediaStored,
    Stored,
    admin_http,
    ask_all,
    ask_media,
    check_admin,
    ledger_media,
    refused,
)
from bot.cli.output import emit_json, progress, relative, say, table, when
from bot.engine.policy import format_duration
from bot.engine.store import Database, open_store
from bot.erasureconfig import ErasureConfig
from bot.errors import UsageError
from bot.matrix.api import HttpReply

SHOWN = 20  # held events listed in text (all of them in --json)


@dataclass(frozen=True)
class LedgerSource:
    """Whose ledger: the bot's database or the bridge's, with the homeserver and the
    erasure settings of that config."""

    name: str  # "bot" | "bridge"
    homeserver_url: str
    erasure: ErasureConfig
    database: Database
    server_name: str  # the homeserver's: its files are the ones it can say it stores


def ledger_source(ctx: click.Context, bridge: bool) -> LedgerSource:
    if not bridge:
        config = cli_config(ctx)
        return LedgerSource("bot", config.homeserver.url, config.erasure, config.database,
                            config.bot.server_name)
    from bridge.config import load_bridge_config  # the bot never imports the bridge

    bridge_config = load_bridge_config(config_path(ctx, "lethe -c CONFIG audit ..."))
    return LedgerSource("bridge", bridge_config.homeserver_url, bridge_config.erasure,
                        bridge_config.database, bridge_config.server_name)


def erasure_audit(ctx: click.Context, room: str, since_ms: int | None,
                  max_held_ms: int | None, bridge: bool, as_json: bool) -> int:
    source = ledger_source(ctx, bridge)
    bound = source.erasure.max_held_ms if max_held_ms is None else max_held_ms

    async def go() -> int:
        now = int(time.time() * 1000)
        start = now - since_ms if since_ms is not None else None
        async with admin_http(source.homeserver_url, source.erasure,
                              "`lethe audit --erasure`") as http:
            await check_admin(http, source.erasure)

            def checked(reply: HttpReply) -> HttpReply:
                refused(reply, source.erasure)
                return reply

            room_id = await room_id_of(http, room, checked)
            store = await open_store(source.database, readonly=True)
            try:
                entries = await store.ledger(room_id, start)
                known = bool(entries) or await store.get_room(room_id) is not None
                refs = await ledger_media(store, [e.event_id for e in entries],
                                          source.server_name)
            finally:
                await store.close()
            if not known:
                raise UsageError(f"unknown room {room}: the {source.name}'s database has "
                                 "no record of it")
            with progress(len(entries), "asking the homeserver", quiet=as_json) as bar:
                stored = await ask_all(http, entries, source.erasure, lambda: bar.update(1))
            media = await ask_media(http, refs, source.erasure)
        now = int(time.time() * 1000)  # ages as of the answers
        found = Findings(tuple(entries), stored, media)
        past = found.past(bound, now)
        clean = not past and not found.count(Stored.ERROR) and \
            not found.media_count(MediaStored.ERROR)
        if as_json:
            emit_json(_json(source, room_id, start, bound, found, past, clean, now))
        else:
            _report(source, room, room_id, start, bound, found, past, now)
        return 0 if clean else EXIT_CHECK_FAILED

    return run_async(go)


def _events(entries: list[Any]) -> list[dict[str, Any]]:
    return [{"event_id": e.event_id, "redacted_at": e.redacted_at} for e in entries]


def _json(source: LedgerSource, room_id: str, start: int | None, bound: int, found: Findings,
          past: list[Any], clean: bool, now: int) -> dict[str, Any]:
    held = found.of(Stored.HELD)
    return {
        "room_id": room_id,
        "ledger": source.name,
        "since": start,
        "max_held_ms": bound,
        "checked": len(found.entries),
        "erased": found.count(Stored.ERASED),
        "purged": found.count(Stored.PURGED),
        "held": found.count(Stored.HELD),
        "errors": found.count(Stored.ERROR),
        "held_since": held[0].redacted_at if held else None,
        "held_by_age": dict(found.held_by_age(now)),
        "held_events": _events(held),
        "error_events": _events(found.of(Stored.ERROR)),
        "past_bound": _events(past),
        "media": {state.value: found.media_count(state) for state in MediaStored},
        "clean": clean,
    }


def _report(source: LedgerSource, room: str, room_id: str, start: int | None, bound: int,
            found: Findings, past: list[Any], now: int) -> None:
    shown = room_id if room == room_id else f"{room} ({room_id})"
    scope = f" since {when(start)}" if start is not None else ""
    say(f"{shown}: {len(found.entries)} event(s) in the {source.name}'s erasure ledger (its "
        f"confirmed redactions{scope}).")
    say(f"  erased: {found.count(Stored.ERASED)} (the homeserver keeps only what "
        "redaction leaves)")
    say(f"  purged: {found.count(Stored.PURGED)} (gone from the homeserver's database)")
    held = found.of(Stored.HELD)
    if held:
        say(f"  held:   {len(held)} original(s) still stored, the oldest redacted "
            f"{when(held[0].redacted_at)} ({relative(held[0].redacted_at, now)})")
        for label, count in found.held_by_age(now):
            say(f"          {count} redacted {label} ago")
    else:
        say("  held:   0")
    errors = found.count(Stored.ERROR)
    if errors:
        say(f"  errors: {errors} the homeserver could not answer for (run it again)")
    if found.media:
        say(f"  media:  {found.media_count(MediaStored.PRESENT)} file(s) still stored, "
            f"{found.media_count(MediaStored.DELETED)} deleted, "
            f"{found.media_count(MediaStored.REMOTE)} on other servers (not checked)")
    if not past:
        say(f"Within the bound: nothing is stored longer than {format_duration(bound)} "
            "after Lethe redacted it." if bound else
            "Within the bound: nothing Lethe redacted is still stored.")
        return
    say(f"NOT ERASED: {len(past)} event(s) still stored longer than "
        f"{format_duration(bound) if bound else 'at all'} after Lethe redacted them "
        "(set redaction_retention_period in homeserver.yaml; see `lethe doctor`):")
    table(("REDACTED", "AGO", "EVENT"),
          [(when(e.redacted_at), relative(e.redacted_at, now), e.event_id)
           for e in past[:SHOWN]])
    if len(past) > SHOWN:
        say(f"(the first {SHOWN}; --json lists them all)")
