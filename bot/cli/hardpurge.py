"""`lethe purge ROOM --older-than DUR --hard`: the sweep `purge` does (redact what is
older, verified), then delete that history from the homeserver's database through
Synapse's admin purge API (``delete_local_events``), with a homeserver admin's token.

After the sweep, not instead of it: a purge deletes only this homeserver's copy.
The redactions reach the other servers in the room and the clients' caches, and they
come back to Lethe as echoes, which take the events off its schedule (a purged
event answers 404, as an id the homeserver never had does: left on the schedule it
would end as an unconfirmed failure). So the purge never reaches an event Lethe
still schedules: it waits for the running bot to let go, and otherwise stops just
before the oldest such event and says so.

What Synapse keeps (synapse/rest/admin/__init__.py, PurgeHistoryRestServlet, and
synapse/storage/databases/main/purge_events.py): every state event (made outliers),
and the event the purge stops at. That is the room's last event at or before the
first event the server received at or after the cutoff (in any room): the sweep's
first redaction when there was anything to redact, else possibly the room's last
event from before the cutoff. Only what lies topologically before it is deleted, so
the room's latest event always stays.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import click

from bot.cli.common import EXIT_CHECK_FAILED, run_async
from bot.cli.context import Admin, admin_session, readonly_store
from bot.cli.erasure import admin_http, check_admin, refused
from bot.cli.history import History, PastEvent
from bot.cli.output import emit_json, say, when
from bot.cli.purge import cannot_redact, sweep
from bot.config import Config
from bot.errors import CheckFailed, HomeserverError, UsageError
from bot.matrix.api import MatrixHttp
from bot.runlock import BOT_LOCK, is_held

RELEASE_WAIT_S = 30.0  # for the running bot to see the sweep's redactions
STATUS_WAIT_S = 3600.0  # for Synapse to finish the purge
SYNAPSE_KEEPS = (
    "every state event (memberships, the room's name and topic, power levels, the "
    "retention policy): a purge never deletes room state",
    "the event the purge stops at, which may be the room's last event from before the "
    "cutoff: a purge deletes only what lies before it, so the latest event always stays",
    "other servers' copies: a purge deletes only this homeserver's; the redactions "
    "reached them (what they keep of a redacted event is their own policy)",
)


@dataclass(frozen=True)
class Plan:
    room_id: str
    cutoff: int
    older: list[PastEvent]  # sent before the cutoff, oldest first
    unredacted: list[PastEvent]
    tracked: list[PastEvent]  # of ``older``, still on Lethe's schedule


def hard_purge(config: Config, room: str, age_ms: int, *, dry_run: bool, yes: bool,
               as_json: bool) -> int:
    if not (yes or dry_run or sys.stdin.isatty()):
        raise UsageError("purge --hard deletes history for good and asks first: run it on "
                         "a terminal, or pass --yes")

    async def go() -> int:
        async with admin_http(config.homeserver.url, config.erasure,
                              "`lethe purge --hard`") as hs, admin_session(config) as admin:
            await check_admin(hs, config.erasure)
            plan = await _plan(config, admin, room, int(time.time() * 1000) - age_ms,
                               dry_run)
            scope = f"of {room} sent before {when(plan.cutoff)}"
            if dry_run or not plan.older:
                _report(as_json, plan, {"dry_run": dry_run}, scope)
                return 0
            if not yes and not click.confirm(
                f"Redact {len(plan.unredacted)} and then delete all {len(plan.older)} "
                f"event(s) {scope} from the homeserver's database? This cannot be undone.",
                err=True,
            ):
                raise CheckFailed("not confirmed; nothing was redacted or purged")
            results = await sweep(admin, plan.room_id, plan.unredacted, quiet=as_json)
            failed = [r for r in results if r.outcome == "failed"]
            if failed:
                raise CheckFailed(f"{len(failed)} of {len(results)} redaction(s) failed (e.g. "
                                  f"{failed[0].event_id}: {failed[0].detail}); nothing was "
                                  "purged. Run it again")
            plan = replace(plan, tracked=await _released(config, plan))
            done = await _purge(hs, config, plan)
            after = {e.event_id for e in await History(admin, await admin.room_state(
                plan.room_id)).walk(plan.older[0].origin_ts)}
        kept = [e for e in plan.older if e.event_id in after]
        outcome = {"dry_run": False, "redacted": sum(r.outcome == "redacted" for r in results),
                   **done,
                   "purged": sum(e.event_id not in after for e in plan.older),
                   "kept": [{"event_id": e.event_id, "sent": e.origin_ts,
                             "why": _why(e, plan)} for e in kept]}
        _report(as_json, plan, outcome, scope)
        return 0 if done["status"] == "complete" else EXIT_CHECK_FAILED

    return run_async(go)


async def _plan(config: Config, admin: Admin, room: str, cutoff: int, dry_run: bool) -> Plan:
    room_id = await admin.resolve_room(room)
    state = await admin.room_state(room_id)
    history = await History(admin, state).walk()
    older = [e for e in reversed(history) if e.origin_ts < cutoff]
    unredacted = [e for e in older if not e.redacted]
    problem = cannot_redact(admin, state, unredacted, f"in {room} sent before {when(cutoff)}")
    if problem and not dry_run:
        raise CheckFailed(f"{problem}. Nothing was redacted or purged.")
    if problem:
        say(f"warning: {problem}", err=True)
    return Plan(room_id, cutoff, older, unredacted, await _tracked(config, room_id, older))


async def _tracked(config: Config, room_id: str, events: list[PastEvent]) -> list[PastEvent]:
    """Which of ``events`` Lethe still schedules (its database, read-only)."""
    async with readonly_store(config, required=False) as store:
        if store is None or not events:
            return []
        known = await store.known_event_ids([e.event_id for e in events], room_id=room_id)
    return [e for e in events if e.event_id in known]


async def _released(config: Config, plan: Plan) -> list[PastEvent]:
    """What is still on Lethe's schedule once the running bot has seen the sweep's
    redactions (at once when it does not run: nothing will change)."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    tracked = await _tracked(config, plan.room_id, plan.older)
    while tracked and time.monotonic() < deadline and is_held(config.data_dir / BOT_LOCK):
        await asyncio.sleep(0.25)
        tracked = await _tracked(config, plan.room_id, tracked)
    return tracked


async def _purge(hs: MatrixHttp, config: Config, plan: Plan) -> dict[str, Any]:
    """Start the purge and follow it to its end."""
    point = plan.tracked[0].event_id if plan.tracked else None
    reply = await hs.admin_purge_history(plan.room_id, plan.cutoff, up_to_event_id=point)
    refused(reply, config.erasure)
    if reply.status == 404:  # "there is no event to be purged"
        return {"purge_id": None, "status": "complete", "held_back_before": point}
    purge_id = reply.body.get("purge_id")
    if not reply.ok or not isinstance(purge_id, str):
        error = reply.body.get("error") or reply.errcode or "no details"
        raise HomeserverError(f"the homeserver did not start the purge: HTTP "
                              f"{reply.status}: {error}")
    deadline, wait = time.monotonic() + STATUS_WAIT_S, 0.1
    status = "active"
    while status == "active" and time.monotonic() < deadline:
        await asyncio.sleep(wait)
        wait = min(wait * 2, 2.0)
        answer = await hs.admin_purge_status(purge_id)
        refused(answer, config.erasure)
        if answer.ok:
            status = str(answer.body.get("status", "active"))
    return {"purge_id": purge_id, "status": status, "held_back_before": point}


def _why(event: PastEvent, plan: Plan) -> str:
    if plan.tracked and event.origin_ts >= plan.tracked[0].origin_ts:
        return "held back: on Lethe's schedule"
    return "the event the purge stopped at"


def _report(as_json: bool, plan: Plan, outcome: dict[str, Any], scope: str) -> None:
    if as_json:
        emit_json({"room_id": plan.room_id, "cutoff": plan.cutoff, "matched": len(plan.older),
                   "unredacted": len(plan.unredacted), "tracked": len(plan.tracked),
                   "synapse_keeps": list(SYNAPSE_KEEPS), **outcome})
        return
    if not plan.older:
        say(f"Nothing to purge: no event {scope}.")
        return
    if outcome["dry_run"]:
        say(f"Dry run: would redact {len(plan.unredacted)} and then delete all "
            f"{len(plan.older)} event(s) {scope} from the homeserver's database; nothing "
            "was changed.")
        if plan.tracked:
            say(f"  {len(plan.tracked)} of them are on Lethe's schedule: the purge waits for "
                "the running bot to see their redactions, or stops before them.")
        _keeps()
        return
    say(f"Redacted {outcome['redacted']} event(s) first, then purged {outcome['purged']} "
        f"of the {len(plan.older)} event(s) {scope} from the homeserver's database "
        f"(purge {outcome['purge_id'] or '-'}: {outcome['status']}).")
    if outcome["held_back_before"]:
        say(f"Held back: the purge stopped before {outcome['held_back_before']}, the oldest "
            f"of {len(plan.tracked)} event(s) still on Lethe's schedule (is the bot running? "
            "It lets go once it sees their redactions); run it again later.")
    for kept in outcome["kept"]:
        say(f"  kept: {kept['event_id']}  {when(kept['sent'])}  ({kept['why']})")
    _keeps()


def _keeps() -> None:
    say("Synapse keeps:")
    for line in SYNAPSE_KEEPS:
        say(f"  - {line}")
