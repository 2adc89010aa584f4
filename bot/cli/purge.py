"""`lethe purge ROOM --older-than DUR`: redact now everything older than DUR, whatever
the policy. The explicit sweep of older history the bot never does by itself.

Redactions go through the same transport as the bot's, and each is verified by
fetching the event again: a 200 from /redact alone proves nothing. With ``--hard``
the history is then deleted from the homeserver's database (bot/cli/hardpurge.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import click

from bot.cli.common import EXIT_CHECK_FAILED, cli_config, config_option, run_async
from bot.cli.context import Admin, admin_session, duration_arg
from bot.cli.history import History, PastEvent
from bot.cli.output import (
    emit_json,
    enforcement_text,
    json_option,
    progress,
    say,
    warn,
    when,
)
from bot.cli.roomstate import RoomState
from bot.engine.redactor import Outcome, backoff_ms, fetch_until_redacted
from bot.errors import CheckFailed
from bot.matrix.transport import HttpTransport

MAX_TRIES = 6  # per event, for errors other than 429 (rate limits are waited out)
# Longer than the bot's re-checks: purge has no later retry, and a re-run would send
# a second redaction.
VERIFY_DELAYS_S = (0.0, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Result:
    event_id: str
    outcome: str  # redacted | gone | failed
    detail: str = ""


async def redact_now(transport: HttpTransport, room_id: str, event: PastEvent) -> Result:
    txn_id = f"lethe.purge.{secrets.token_hex(12)}"
    tries = 0
    while tries < MAX_TRIES:
        reply = await transport.redact(room_id, event.event_id, event.sender, txn_id)
        if reply.outcome is Outcome.RATE_LIMITED:
            await asyncio.sleep(max(reply.retry_after_ms or 1000, 100) / 1000)
            continue
        tries += 1
        if reply.outcome is Outcome.OK:
            seen = await fetch_until_redacted(
                lambda: transport.check(room_id, event.event_id, event.sender),
                VERIFY_DELAYS_S)
            if seen.outcome is Outcome.REDACTED:
                return Result(event.event_id, "redacted")
            return Result(event.event_id, "failed", "the homeserver does not confirm it")
        if reply.outcome is Outcome.TRANSIENT:
            await asyncio.sleep(backoff_ms(tries) / 1000)
            continue
        if reply.outcome is Outcome.NOT_FOUND:
            return Result(event.event_id, "gone", reply.detail)
        return Result(event.event_id, "failed", reply.detail or reply.outcome.value)
    return Result(event.event_id, "failed", f"gave up after {MAX_TRIES} tries")


async def sweep(admin: Admin, room_id: str, doomed: list[PastEvent], *,
                quiet: bool) -> list[Result]:
    """Redact each event in turn, verified, with a progress bar on a terminal."""
    transport = HttpTransport(admin.http)
    results = []
    with progress(len(doomed), "redacting", quiet=quiet) as bar:
        for event in doomed:
            results.append(await redact_now(transport, room_id, event))
            bar.update(1)
    return results


def cannot_redact(admin: Admin, state: RoomState, doomed: list[PastEvent],
                  scope: str) -> str | None:
    """Why the bot cannot redact some of ``doomed`` (others' events, without power)."""
    others = sum(e.sender != admin.bot for e in doomed)
    if others and not state.power.can_redact_others(admin.bot):
        return (f"the bot cannot redact the {others} event(s) of other senders {scope}: "
                f"{enforcement_text(state, admin.bot, long=True)}")
    return None


@click.command()
@click.argument("room")
@click.option("--older-than", "older_than", metavar="DUR", required=True,
              help="Redact every event sent more than DUR ago (30s, 5m, 1h30m, 2d, 1w).")
@click.option("--hard", is_flag=True,
              help="Then also delete that history from the homeserver's database (admin "
                   "purge API; needs a homeserver admin's token).")
@click.option("--dry-run", is_flag=True, help="Only count and list; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
@json_option
@click.pass_context
def purge(ctx: click.Context, room: str, older_than: str, hard: bool, dry_run: bool,
          yes: bool, as_json: bool) -> None:
    """Redact now every message of ROOM older than --older-than, whatever the policy
    (a retroactive sweep). Asks first unless --yes; exit 1 if any redaction failed.
    With --hard, then delete that history from the homeserver's database."""
    config = cli_config(ctx)
    age_ms = duration_arg("--older-than", older_than)
    if hard:
        from bot.cli.hardpurge import hard_purge  # it builds on this module

        ctx.exit(hard_purge(config, room, age_ms, dry_run=dry_run, yes=yes, as_json=as_json))

    async def go() -> int:
        cutoff = int(time.time() * 1000) - age_ms
        async with admin_session(config) as admin:
            room_id = await admin.resolve_room(room)
            state = await admin.room_state(room_id)
            history = await History(admin, state).walk()
            doomed = [e for e in reversed(history) if e.origin_ts < cutoff and not e.redacted]
            scope = f"in {room} sent before {when(cutoff)}"
            problem = cannot_redact(admin, state, doomed, scope)
            if problem:
                if not dry_run:
                    raise CheckFailed(f"{problem}. Nothing was redacted.")
                warn(problem)
            if dry_run or not doomed:
                _report(as_json, dry_run, doomed, [], scope)
                return 0
            if not yes and not click.confirm(
                f"Redact {len(doomed)} event(s) {scope}? This cannot be undone.", err=True
            ):
                raise CheckFailed("not confirmed; nothing was redacted")
            results = await sweep(admin, room_id, doomed, quiet=as_json)
        _report(as_json, dry_run, doomed, results, scope)
        return EXIT_CHECK_FAILED if any(r.outcome == "failed" for r in results) else 0

    ctx.exit(run_async(go))


def _report(as_json: bool, dry_run: bool, doomed: list[PastEvent], results: list[Result],
            scope: str) -> None:
    counts = {k: sum(r.outcome == k for r in results) for k in ("redacted", "gone", "failed")}
    if as_json:
        emit_json({
            "dry_run": dry_run,
            "matched": len(doomed),
            **counts,
            "events": [{"event_id": e.event_id, "sender": e.sender, "sent": e.origin_ts}
                       for e in doomed] if dry_run else
                      [{"event_id": r.event_id, "outcome": r.outcome, "detail": r.detail}
                       for r in results],
        })
        return
    if not doomed:
        say(f"Nothing to purge: no unredacted event {scope}.")
        return
    if dry_run:
        say(f"Dry run: would redact {len(doomed)} event(s) {scope}; nothing was "
                   "changed.")
        for event in doomed:
            say(f"  {event.event_id}  {event.sender}  {when(event.origin_ts)}")
        return
    say(f"Redacted {counts['redacted']} of {len(doomed)}; already gone "
               f"{counts['gone']}; failed {counts['failed']}.")
    for result in results:
        if result.outcome == "failed":
            say(f"  failed: {result.event_id}: {result.detail}")
