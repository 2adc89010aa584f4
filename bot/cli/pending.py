"""`lethe pending [ROOM]`: what Lethe has scheduled, and when. Ids and times only.

Reads Lethe's database read-only, so it works while the bot runs, and with a
room id (not an alias) also while the homeserver is down.
"""

from __future__ import annotations

import time

import click

from bot.cli.census import STATUS_NAMES
from bot.cli.common import cli_config, config_option, run_async
from bot.cli.context import admin_session, readonly_store
from bot.cli.output import emit_json, json_option, relative, say, table, when
from bot.engine.msgtimer import Own
from bot.errors import UsageError

# Why an event has a deadline of its own (none: the room's rule).
OWN_NAMES: dict[Own | int, str | None] = {Own.NONE: None, Own.TIMER: "timer",
                                          Own.EXPIRE: "expire"}


@click.command()
@click.argument("room", required=False)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Show at most this many events, earliest due first.")
@config_option
@json_option
@click.pass_context
def pending(ctx: click.Context, room: str | None, limit: int, as_json: bool) -> None:
    """What is scheduled for redaction and when: event ids, senders and times, never
    content. ROOM (a room id or an alias) narrows it to one room."""
    config = cli_config(ctx)

    async def go() -> None:
        room_id = room
        if room is not None and not room.startswith("!"):
            async with admin_session(config) as admin:
                room_id = await admin.resolve_room(room)
        async with readonly_store(config, required=True) as store:
            assert store is not None
            if room_id is not None and await store.get_room(room_id) is None:
                raise UsageError(f"unknown room {room}: Lethe has no record of it")
            rows = await store.pending(room_id, limit)
        if as_json:
            emit_json([
                {"event_id": r.event_id, "room_id": r.room_id, "sender": r.sender,
                 "sent": r.origin_ts, "due": r.due_at, "state": STATUS_NAMES.get(r.status),
                 "own": OWN_NAMES.get(r.own)}
                for r in rows
            ])
            return
        if not rows:
            say("Nothing is scheduled" + (f" in {room}." if room else "."))
            return
        now = int(time.time() * 1000)
        headers = ("DUE", "", "STATUS", "EVENT", *(() if room else ("ROOM",)), "SENDER", "SENT",
                   "OWN")
        table(headers, [
            (when(r.due_at), relative(r.due_at, now), STATUS_NAMES.get(r.status, r.status),
             r.event_id, *(() if room else (r.room_id,)), r.sender, when(r.origin_ts),
             OWN_NAMES.get(r.own) or "-")
            for r in rows
        ])
        if len(rows) == limit:
            say(f"(the first {limit}; --limit shows more)")

    run_async(go)
