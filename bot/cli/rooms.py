"""`lethe rooms list|show|leave`: the rooms the bot is in, as the homeserver and
Lethe's database see them."""

from __future__ import annotations

import time
from typing import Any

import click

from bot.cli.census import RoomSchedule, room_schedules
from bot.cli.common import cli_config, config_option, run_async
from bot.cli.context import admin_session, readonly_store
from bot.cli.output import (
    bounds_json,
    emit_json,
    enforcement,
    enforcement_text,
    fields,
    json_option,
    media_json,
    policy_cell,
    policy_events_json,
    policy_json,
    policy_lines,
    relative,
    say,
    table,
)
from bot.cli.pinned import pinned_notice
from bot.cli.roomstate import RoomState
from bot.config import Config
from bot.engine.givenup import META_KEY as GIVEN_UP_KEY
from bot.engine.givenup import GivenUpRoom, load_given_up
from bot.engine.media import describe_media
from bot.engine.model import MediaCounts
from bot.engine.store import StoreBackend
from bot.front.joins import META_KEY as JOINS_META
from bot.front.joins import PendingInvite, load_pending


def summary(state: RoomState, schedule: RoomSchedule | None, store: StoreBackend | None,
            config: Config, media: dict[str, Any] | None = None) -> dict[str, Any]:
    """One room, as `rooms list --json` shows it."""
    known = store is not None
    return {
        "room_id": state.room_id,
        "name": state.name,
        "alias": state.canonical_alias,
        "encrypted": state.encrypted,
        "members": len(state.members),
        "policy": policy_json(state.policy),
        "bounds": bounds_json(state, config),  # what is enforced, where a bound changes it
        "policy_sender": state.policy_sender,
        **enforcement(state, config.bot.user_id),
        # None: Lethe's database could not be read.
        "pending": (schedule.pending if schedule else 0) if known else None,
        "next_due": schedule.next_due if schedule else None,
        "media": media,  # its files (see media_json)
    }


def given_up_json(room: GivenUpRoom) -> dict[str, Any]:
    """A room the bot left with redactions still scheduled, as `rooms list --json`
    shows it after the invites."""
    return {"room_id": room.room_id, "membership": "leave", "left_at": room.left_at_ms,
            "given_up": room.given_up, "next_due": room.next_due_ms}


def invite_json(invite: PendingInvite) -> dict[str, Any]:
    """A pending invite, as `rooms list --json` shows it after the joined rooms."""
    return {"room_id": invite.room_id, "membership": "invite", "inviter": invite.inviter,
            "since": invite.since_ms, "attempts": invite.attempts,
            "last_error": invite.last_error}


@click.group()
def rooms() -> None:
    """The rooms the bot is in."""


@rooms.command("list")
@config_option
@json_option
@click.pass_context
def list_rooms(ctx: click.Context, as_json: bool) -> None:
    """Every room the bot is in: name, id, encryption, members, policy, whether the bot
    can enforce it, pending count and next due time."""
    config = cli_config(ctx)

    async def go() -> None:
        async with admin_session(config) as admin, \
                readonly_store(config, required=False) as store:
            schedules = await room_schedules(store) if store is not None else {}
            invites = load_pending(await store.get_meta(JOINS_META)) if store else {}
            left = load_given_up(await store.get_meta(GIVEN_UP_KEY)) if store else []
            found = []
            deletes = config.erasure.deletes_media
            for room_id in await admin.joined_rooms():
                state = await admin.room_state(room_id)
                media = media_json(await _media(store, room_id), deletes)
                found.append((state, summary(state, schedules.get(room_id), store, config,
                                             media)))
            total = await _media(store, None)
        joined = {state.room_id for state, _ in found}
        waiting = [i for i in invites.values() if i.room_id not in joined]
        gone = [g for g in left if g.room_id not in joined]
        if as_json:
            emit_json([*(row for _, row in found), *(invite_json(i) for i in waiting),
                       *(given_up_json(g) for g in gone)])
            return
        if waiting:
            now = int(time.time() * 1000)
            say("Invites the bot could not accept yet (retried with backoff):")
            table(("ID", "INVITED BY", "SINCE", "ATTEMPTS", "LAST ERROR"),
                  [(i.room_id, i.inviter or "?", relative(i.since_ms, now), i.attempts,
                    i.last_error) for i in waiting])
            say("")
        if gone:
            now = int(time.time() * 1000)
            say("Rooms the bot left (kicked, banned or left) with redactions still "
                "scheduled; those messages stay:")
            table(("ID", "LEFT", "GIVEN UP", "EARLIEST WAS DUE"),
                  [(g.room_id, relative(g.left_at_ms, now), g.given_up,
                    relative(g.next_due_ms, now)) for g in gone])
            say("")
        if not found:
            say("The bot is in no rooms. Invite it into one.")
            return
        now = int(time.time() * 1000)
        table(
            ("ROOM", "ID", "E2EE", "MEMBERS", "POLICY", "ENFORCED", "PENDING", "NEXT DUE"),
            [
                (
                    state.name or state.canonical_alias or "-", state.room_id,
                    "yes" if state.encrypted else "no",
                    len(state.members), policy_cell(state, config),
                    enforcement_text(state, admin.bot),
                    "?" if row["pending"] is None else row["pending"],
                    relative(row["next_due"], now),
                )
                for state, row in found
            ],
        )
        if total is not None:
            say("")
            say(f"Files, all rooms: {describe_media(total if deletes else None)}")

    run_async(go)


async def _media(store: StoreBackend | None, room_id: str | None) -> MediaCounts | None:
    """The files Lethe knows of in ``room_id`` (None: everywhere); None: no database."""
    return await store.media_counts(room_id) if store is not None else None


@rooms.command()
@click.argument("room")
@config_option
@json_option
@click.pass_context
def show(ctx: click.Context, room: str, as_json: bool) -> None:
    """One room in detail. ROOM: a room id (!id:server) or an alias (#name:server)."""
    config = cli_config(ctx)

    async def go() -> None:
        async with admin_session(config) as admin, \
                readonly_store(config, required=False) as store:
            room_id = await admin.resolve_room(room)
            state = await admin.room_state(room_id)
            schedule = (await room_schedules(store)).get(room_id) if store else None
            row = await store.get_room(room_id) if store else None
            media = await _media(store, room_id)
            pinned = await pinned_notice(admin.http, store, state, admin.bot)
        deletes = config.erasure.deletes_media
        data = {
            **summary(state, schedule, store, config, media_json(media, deletes)),
            "alt_aliases": list(state.alt_aliases),
            "joined_members": list(state.members),
            "policy_events": policy_events_json(state),
            "lethe_policy": policy_json(row.policy) if row else None,
            "redacted": row.redacted_count if row else None,
            "failed": row.failed_count if row else None,
            "pinned_notice": pinned,
        }
        if as_json:
            emit_json(data)
            return
        now = int(time.time() * 1000)
        aliases = [a for a in (state.canonical_alias, *state.alt_aliases) if a]
        lines = [
            ("Room", state.room_id),
            ("Name", state.name or "-"),
            ("Aliases", ", ".join(aliases) or "-"),
            ("Encrypted", "yes" if state.encrypted else "no"),
            ("Members", f"{len(state.members)}: {', '.join(state.members)}"),
            ("Policy", data["bounds"]["text"]
             + (f", set by {state.policy_sender}" if state.policy_sender else "")),
            ("Enforced", enforcement_text(state, admin.bot, long=True)),
            *policy_lines(state, row, config),
            ("Pinned notice", pinned),
        ]
        if data["pending"] is not None:
            lines.append(("Pending", f"{data['pending']}, next due "
                                     f"{relative(data['next_due'], now)}"))
            lines.append(("Redacted", f"{data['redacted'] or 0}, given up on "
                                      f"{data['failed'] or 0}"))
        if media is not None:
            lines.append(("Files", describe_media(media if deletes else None)))
        fields(lines)

    run_async(go)


@rooms.command()
@click.argument("room")
@config_option
@click.pass_context
def leave(ctx: click.Context, room: str) -> None:
    """Make the bot leave ROOM. What it had scheduled there is dropped."""
    config = cli_config(ctx)

    async def go() -> None:
        async with admin_session(config) as admin, \
                readonly_store(config, required=False) as store:
            room_id = await admin.resolve_room(room)
            pending = await store.pending_count(room_id) if store else 0
            await admin.expect(admin.http.leave(room_id), f"leaving {room_id}")
        say(f"left {room_id}")
        if pending:
            say(f"{pending} scheduled redaction(s) there will not happen now")

    run_async(go)
