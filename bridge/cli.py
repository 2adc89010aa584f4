"""`lethe bridge ...`: write the appservice registration, run the bridge, list its
rooms, print Synapse's retention section matching its default policy, show a
person's defaults for new chats kept by the bridge's bot.

Loaded lazily by the `lethe` group, so the bot never imports the bridge.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from bot.cli.common import config_option, config_path, run_async, setup_logging, stop_on_signals
from bot.cli.output import json_option
from bot.engine.model import RoomRow
from bot.engine.store import open_store
from bot.errors import HomeserverError, SetupError, UsageError
from bridge.config import BridgeConfig, load_bridge_config
from bridge.registration import RegistrationError, build_registration, write_registration

log = logging.getLogger("bridge.cli")


def _config(ctx: click.Context) -> BridgeConfig:
    return load_bridge_config(config_path(ctx, "lethe -c CONFIG bridge ..."))


@click.group()
def bridge() -> None:
    """The appservice bridge: server-wide enforcement, no bot in the rooms."""


@bridge.command()
@config_option
@click.option("--url", required=True,
              help="Where the homeserver reaches the bridge, e.g. http://127.0.0.1:29331.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Registration file to write (default: bridge.registration of the config).")
@click.option("--force", is_flag=True, help="Replace an existing file (new tokens).")
@click.pass_context
def registration(ctx: click.Context, url: str, out: Path | None, force: bool) -> None:
    """Write the appservice registration file (mode 0600) for the homeserver."""
    config = _config(ctx)
    path = out if out is not None else config.registration_path
    try:
        write_registration(path, build_registration(config, url), force=force)
    except RegistrationError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"{path}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {path} (mode 0600; it holds the bridge's tokens). Add it to "
               "homeserver.yaml and restart the homeserver:\n"
               f"  app_service_config_files:\n    - {path.resolve()}")


@bridge.command("retention-config")
@config_option
@click.option("--interval", metavar="DUR",
              help="How often Synapse's purge job runs (default: a tenth of max_lifetime, "
                   "from 1m to 1d).")
@click.pass_context
def retention_config(ctx: click.Context, interval: str | None) -> None:
    """Print the homeserver.yaml `retention:` section that makes Synapse purge from its
    database, server-wide, what bridge.default_policy redacts."""
    from bot.cli.context import duration_arg
    from bridge.synapseretention import NothingToMirror, retention_section

    config = _config(ctx)
    interval_ms = None if interval is None else duration_arg("--interval", interval)
    try:
        click.echo(retention_section(config.default_policy, interval_ms), nl=False)
    except NothingToMirror as exc:
        raise SetupError(str(exc)) from None


@bridge.command()
@config_option
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the bridge until SIGINT or SIGTERM."""
    from bridge.app import Bridge, CannotListen, RegistrationNotLoaded

    config = _config(ctx)
    setup_logging(config.log_level)

    async def go() -> None:
        # The bridge holds its run lock (exit 3 if another holds it): see bot/runlock.py.
        log.info("starting the Lethe bridge as %s for %s", config.user_id,
                 config.homeserver_url)
        await Bridge(config).run_until(stop_on_signals())
        log.info("stopped")

    try:
        run_async(go)
    except (RegistrationError, CannotListen) as exc:
        raise SetupError(str(exc)) from None
    except RegistrationNotLoaded as exc:
        raise HomeserverError(str(exc)) from None


@bridge.command()
@config_option
@json_option
@click.pass_context
def rooms(ctx: click.Context, as_json: bool) -> None:
    """The rooms the bridge enforces, from its database (read-only, safe while it runs):
    policy, whether it can enforce it, pending count and next due time, and the files of
    expired messages."""
    from bot.cli.census import room_schedules
    from bot.cli.output import (
        emit_json,
        enforced_cell,
        enforced_json,
        media_json,
        policy_json,
        relative,
        table,
    )
    from bot.engine.bounds import row_enforcement
    from bot.engine.media import describe_media
    from bridge.rooms import OWNERS_META, load_room_map

    config = _config(ctx)
    deletes = config.erasure.deletes_media

    async def go() -> None:
        store = await open_store(config.database, readonly=True)
        try:
            rows = await store.list_rooms()
            schedules = await room_schedules(store)
            owners = load_room_map(await store.get_meta(OWNERS_META))
            media = {row.room_id: await store.media_counts(row.room_id) for row in rows}
            total = await store.media_counts()
        finally:
            await store.close()
        found: list[dict[str, Any]] = []
        enforced = {row.room_id: row_enforcement(row, config.bounds, config.default_policy)
                    for row in rows}
        for row in rows:
            schedule = schedules.get(row.room_id)
            found.append({
                "room_id": row.room_id,
                "policy": policy_json(row.policy),  # as enforced (the bounds: "bounds")
                "bounds": enforced_json(enforced[row.room_id],
                                        config.bounds.for_room(row.room_id)),
                "policy_sender": row.policy_sender,
                "can_enforce": row.can_redact_others,
                # None: the bridge; else the Lethe bot (bridge.defer_to) that has power
                # and a policy there, which owns what is sent while it stays so.
                "enforced_by": owners.get(row.room_id),
                "bot_level": row.bot_level,
                "redact_level": row.redact_level,
                "pending": schedule.pending if schedule else 0,
                "next_due": schedule.next_due if schedule else None,
                "redacted": row.redacted_count,
                "failed": row.failed_count,
                "media": media_json(media[row.room_id], deletes),
            })
        if as_json:
            emit_json(found)
            return
        if not found:
            click.echo("The bridge has seen no rooms yet.")
            return
        now = int(time.time() * 1000)
        table(
            ("ID", "POLICY", "ENFORCED", "BY", "PENDING", "NEXT DUE", "REDACTED", "FAILED"),
            [
                (
                    room["room_id"], enforced_cell(enforced[row.room_id]), _enforced(row),
                    room["enforced_by"] or "bridge",
                    room["pending"], relative(room["next_due"], now), room["redacted"],
                    room["failed"],
                )
                for row, room in zip(rows, found, strict=True)
            ],
        )
        click.echo(f"\nFiles, all rooms: {describe_media(total if deletes else None)}"
                   + (" (the bridge cannot read encrypted messages, so it never sees their "
                      "files: in encrypted rooms, the bot deletes them)" if deletes else ""))

    run_async(go)


@bridge.command()
@config_option
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """What the bridge has scheduled, from its database (read-only, safe while it runs):
    redactions pending by state, and whether the homeserver redacts on time by itself
    while the bridge is stopped (delayed redactions) and for how many messages."""
    from bot.cli.census import delayed_summary, pending_by_status
    from bot.cli.output import emit_json
    from bot.engine.bounds import row_enforcement

    config = _config(ctx)

    async def go() -> None:
        store = await open_store(config.database, readonly=True)
        try:
            pending = await pending_by_status(store)
            delayed = await delayed_summary(store)
            rows = await store.list_rooms()
        finally:
            await store.close()
        # Rooms whose state sets a policy outside the operator's bounds (enforced at them).
        at_bound = sorted(row.room_id for row in rows if row_enforcement(
            row, config.bounds, config.default_policy).problem is not None)
        if as_json:
            emit_json({"pending": pending, "delayed": {
                "in_use": delayed.in_use, "reason": delayed.reason,
                "armed": delayed.armed, "cancels": delayed.cancels,
                "enabled": config.delayed_redactions},
                "bounds": {"bounds": config.bounds.default.describe(),
                           "room_rules": len(config.bounds.rooms),
                           "rooms_at_bound": at_bound}})
            return
        click.echo("Pending: " + ", ".join(f"{n} {name}" for name, n in pending.items()))
        click.echo(f"Delayed redactions: {_delayed_text(delayed, config)}")
        click.echo(f"Bounds: {config.bounds.default.describe()}"
                   + (f" ({len(config.bounds.rooms)} room rule(s))" if config.bounds.rooms
                      else "")
                   + f"; {len(at_bound)} room(s) enforced at a bound (lethe bridge rooms)")

    run_async(go)


def _delayed_text(delayed: Any, config: BridgeConfig) -> str:
    if delayed.in_use:
        text = (f"in use: the homeserver holds a delayed redaction of {delayed.armed} "
                "message(s) and redacts each on time by itself, even while the bridge is "
                "stopped")
    elif not config.delayed_redactions:
        text = "not in use: turned off in the config (redaction.delayed: off)"
    elif delayed.in_use is None:
        text = ("not known: the bridge has not recorded what the homeserver offers "
                "(it does on each start)")
    else:
        text = f"not in use: {delayed.reason}"
    if delayed.cancels:
        text += f"; {delayed.cancels} cancellation(s) still to send"
    return text


def _enforced(row: RoomRow) -> str:
    if row.can_redact_others:
        return "yes"
    level = "unknown" if row.bot_level is None else row.bot_level
    return (f"NO (remote senders: the bridge's bot must be joined with power level "
            f"{row.redact_level}; its level: {level})")


@bridge.command()
@click.argument("user")
@config_option
@json_option
@click.pass_context
def defaults(ctx: click.Context, user: str, as_json: bool) -> None:
    """The defaults USER set for new direct chats and groups with the bridge's bot
    (`!lethe default` in a direct chat with it), from its account data, with the
    registration's token. Read-only."""
    from bot.cli.defaults import checked_user, fetch_defaults, show_defaults
    from bot.matrix.api import MatrixHttp
    from bridge.registration import load_registration

    config = _config(ctx)
    checked_user(user)
    try:
        token = load_registration(config.registration_path).as_token
    except RegistrationError as exc:
        raise SetupError(str(exc)) from None

    async def go() -> None:
        http = MatrixHttp(config.homeserver_url, token)
        try:
            found = await fetch_defaults(http, config.user_id, user)
        finally:
            await http.close()
        show_defaults(user, config.user_id, found, "none: the room starts without "
                      "(the bridge enforces bridge.default_policy, not in its state)",
                      None, as_json)

    run_async(go)
