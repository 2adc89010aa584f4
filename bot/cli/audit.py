"""`lethe audit ROOM`: prove from the homeserver's side that what is due is gone.

It walks the room's history as the homeserver serves it, not Lethe's database, so
it also catches what Lethe never saw. Each event is judged under the policy in
force when it was sent; edits, reactions and poll responses are due with their
message at the latest, unless somebody other than the bot redacted that message
(only Lethe's own expiry takes them along). Thread replies have their own due
time. Events sent while the bot was not in the room are out of scope, as they
are for the bot.

With ``--erasure`` it asks instead whether the homeserver still stores what Lethe
redacted there (bot/cli/erasure_audit.py).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import click

from bot.cli.common import EXIT_CHECK_FAILED, cli_config, config_option, run_async
from bot.cli.context import admin_session, duration_arg
from bot.cli.erasure_audit import erasure_audit
from bot.cli.history import History, PastEvent
from bot.cli.output import emit_json, json_option, progress, relative, say, table, when
from bot.engine.policy import Mode, format_duration
from bot.errors import UsageError
from bot.matrix.pins import read_pins

AFTER_READ_NOTE = (
    "after-read is checked against its cap, the latest any message may live: read "
    "receipts cannot be seen from here, so a message that was read and is overdue "
    "for that reason is only listed once its cap has passed too."
)


@dataclass(frozen=True)
class Overdue:
    event: PastEvent
    due: int


@dataclass(frozen=True)
class Findings:
    checked: int
    due: int  # events whose due time (plus grace) has passed
    overdue: tuple[Overdue, ...]
    after_read: bool  # some event was under after_read: the cap was the bound


def judge(events_newest_first: list[PastEvent], now_ms: int, grace_ms: int,
          bot_user_id: str | None = None, pinned: Collection[str] = ()) -> Findings:
    """Which events are past their due time and still there. The bot's own events in
    ``pinned`` (its pinned policy notice) do not expire while pinned."""
    dues: dict[str, int | None] = {}
    leads: dict[str, int | None] = {}  # the due time an event's children follow
    overdue: list[Overdue] = []
    due_count = 0
    after_read = False
    for event in reversed(events_newest_first):  # parents before their children
        due: int | None = None
        if event.bot_joined and event.policy.active and not (
                event.sender == bot_user_id and event.event_id in pinned):
            policy = event.policy
            after_read = after_read or policy.mode is Mode.AFTER_READ
            due = policy.deadline(event.origin_ts)  # unread: receipts cannot be seen here
        parent_due = leads.get(event.parent_id) if event.parent_id else None
        # An edit, reaction or poll response goes with its message (if sent before that
        # was due: later ones are tracked on their own).
        if event.bot_joined and parent_due is not None and event.origin_ts < parent_due:
            due = parent_due if due is None else min(due, parent_due)
        dues[event.event_id] = due
        # Somebody else's redaction takes no children along; the bot's expiry does.
        foreign = event.redacted and event.redacted_by not in (None, bot_user_id)
        leads[event.event_id] = None if foreign else due
        if due is not None and due + grace_ms <= now_ms:
            due_count += 1
            if not event.redacted:
                overdue.append(Overdue(event, due))
    return Findings(len(events_newest_first), due_count, tuple(overdue), after_read)


@click.command()
@click.argument("room")
@click.option("--since", metavar="DUR",
              help="Only events sent (with --erasure: redacted) in the last DUR (default: "
                   "the whole visible history, or the whole ledger).")
@click.option("--grace", metavar="DUR", default="1m", show_default=True,
              help="How late a redaction may be before it counts (the bot may be at it); "
                   "0 for none. Not with --erasure.")
@click.option("--erasure", is_flag=True,
              help="Instead: ask the homeserver (with an admin's token) whether it still "
                   "stores the originals of the events Lethe redacted in ROOM.")
@click.option("--max-held", "max_held", metavar="DUR",
              help="With --erasure: how long after its redaction an original may still be "
                   "stored (default: erasure.max_held; 0 for not at all).")
@click.option("--bridge", is_flag=True,
              help="With --erasure: the bridge's ledger (its database) instead of the bot's.")
@config_option
@json_option
@click.pass_context
def audit(ctx: click.Context, room: str, since: str | None, grace: str, erasure: bool,
          max_held: str | None, bridge: bool, as_json: bool) -> None:
    """List every event of ROOM that is past its due time but not redacted, from the
    homeserver's view. Exit 1 if there is any, 0 if the room is clean. With --erasure,
    whether the homeserver still stores what Lethe redacted (exit 1: longer than
    --max-held)."""
    since_ms = duration_arg("--since", since) if since is not None else None
    if erasure:
        if ctx.get_parameter_source("grace") is not click.core.ParameterSource.DEFAULT:
            raise UsageError("--grace does not go with --erasure (see --max-held)")
        held_ms = duration_arg("--max-held", max_held, zero_ok=True) \
            if max_held is not None else None
        ctx.exit(erasure_audit(ctx, room, since_ms, held_ms, bridge, as_json))
    if max_held is not None or bridge:
        raise UsageError("--max-held and --bridge go with --erasure")
    config = cli_config(ctx)
    grace_ms = duration_arg("--grace", grace, zero_ok=True)

    async def go() -> int:
        now = int(time.time() * 1000)
        start = now - since_ms if since_ms is not None else None
        async with admin_session(config) as admin:
            room_id = await admin.resolve_room(room)
            state = await admin.room_state(room_id)
            oldest = max(start or 0, state.created_ts or 0)
            with progress(now - oldest, "auditing", quiet=as_json) as bar:
                reached = [now]

                def advance(ts: int) -> None:
                    if ts:
                        bar.update(reached[0] - max(ts, oldest))
                        reached[0] = max(ts, oldest)

                events = await History(admin, state).walk(start, advance)
            pins = await read_pins(admin.http, room_id)
        found = judge(events, now, grace_ms, admin.bot, pins.pinned)
        if as_json:
            emit_json({
                "room_id": room_id,
                "since": start,
                "grace_ms": grace_ms,
                "checked": found.checked,
                "due": found.due,
                "clean": not found.overdue,
                "overdue": [
                    {"event_id": o.event.event_id, "type": o.event.event_type,
                     "sender": o.event.sender, "sent": o.event.origin_ts, "due": o.due}
                    for o in found.overdue
                ],
                "notes": [AFTER_READ_NOTE] if found.after_read else [],
            })
        else:
            _report(state.title, start, found, now)
        return EXIT_CHECK_FAILED if found.overdue else 0

    ctx.exit(run_async(go))


def _report(title: str, start: int | None, found: Findings, now: int) -> None:
    scope = f"since {when(start)}" if start is not None else "in the whole visible history"
    say(f"{title}: {found.checked} event(s) {scope}, {found.due} past their due time.")
    if found.after_read:
        say(f"Note: {AFTER_READ_NOTE}")
    if not found.overdue:
        say("Clean: everything past its due time is redacted.")
        return
    say(f"NOT CLEAN: {len(found.overdue)} event(s) past their due time are not "
               "redacted:")
    table(
        ("DUE", "LATE BY", "EVENT", "TYPE", "SENDER", "SENT"),
        [(when(o.due), format_duration(now - o.due), o.event.event_id, o.event.event_type,
          o.event.sender, relative(o.event.origin_ts, now)) for o in found.overdue],
    )
