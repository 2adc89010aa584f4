"""`lethe policy show|set|clear ROOM`: the room's retention policy, in its state.

Setting writes the same two state events the in-room command writes, as the bot's
account, so it works while the bot is stopped; the bot applies and announces it
when it next syncs.
"""

from __future__ import annotations

import click

from bot.cli.common import cli_config, config_option, run_async
from bot.cli.context import Admin, admin_session, duration_arg, readonly_store
from bot.cli.output import (
    emit_json,
    enforcement,
    enforcement_text,
    fields,
    json_option,
    policy_events_json,
    policy_json,
    policy_lines,
    say,
    warn,
)
from bot.config import Config
from bot.engine.policy import (
    Policy,
    PolicyError,
    Readers,
    after_read_policy,
    parse_readers,
)
from bot.engine.power import describe_level
from bot.errors import CheckFailed, HomeserverError, UsageError
from bot.matrix.policy_state import PolicyWriteFailed, missing_policy_power, write_policy


@click.group()
def policy() -> None:
    """A room's retention policy (in its state, where members can see it)."""


@policy.command()
@click.argument("room")
@config_option
@json_option
@click.pass_context
def show(ctx: click.Context, room: str, as_json: bool) -> None:
    """The policy of ROOM (a room id or an alias), who set it, and whether the bot can
    enforce it."""
    config = cli_config(ctx)

    async def go() -> None:
        async with admin_session(config) as admin, \
                readonly_store(config, required=False) as store:
            room_id = await admin.resolve_room(room)
            state = await admin.room_state(room_id)
            row = await store.get_room(room_id) if store else None
        if as_json:
            emit_json({
                "room_id": room_id,
                "policy": policy_json(state.policy),
                "policy_sender": state.policy_sender,
                **enforcement(state, admin.bot),
                "policy_events": policy_events_json(state),
                "lethe_policy": policy_json(row.policy) if row else None,
            })
            return
        fields([
            ("Room", state.title),
            ("Policy", state.policy.describe()),
            ("Set by", state.policy_sender or "nobody (no policy in the room state)"),
            ("Enforced", enforcement_text(state, admin.bot, long=True)),
            *policy_lines(state, row),
        ])

    run_async(go)


def build_policy(after_send: str | None, after_read: str | None, cap: str | None,
                 readers: str | None, default_cap_ms: int) -> Policy:
    """The policy the options describe; exit 2 for anything contradictory or malformed."""
    if (after_send is None) == (after_read is None):
        raise UsageError("give exactly one of --after-send DUR or --after-read DUR")
    if after_send is not None:
        if cap is not None or readers is not None:
            raise UsageError("--cap and --readers go with --after-read only")
        return Policy.after_send(duration_arg("--after-send", after_send))
    assert after_read is not None
    timer = duration_arg("--after-read", after_read)
    cap_ms = duration_arg("--cap", cap) if cap is not None else None
    try:
        return after_read_policy(timer, cap_ms, parse_readers(readers or Readers.ALL.value),
                                 default_cap_ms)
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


async def apply_policy(admin: Admin, room: str, new: Policy) -> None:
    """Write ``new`` as the room's policy, after checking the bot may; prints what
    happened. Nothing is written when anything is wrong."""
    room_id = await admin.resolve_room(room)
    state = await admin.room_state(room_id)
    missing = missing_policy_power(state.power, admin.bot)
    if missing is not None:
        raise CheckFailed(
            f"the bot may not change the policy in {room}: sending {missing.event_type} "
            f"needs power level {missing.needed}, the bot has "
            f"{describe_level(state.power.level(admin.bot))}. Nothing was changed."
        )
    try:
        await write_policy(admin.http, room_id, new)
    except PolicyWriteFailed as exc:
        raise HomeserverError(f"could not write the policy of {room}: {exc}") from None
    say(f"{room}: policy set to {new.describe()}. The bot announces it in the room "
               "when it next syncs.")
    if new.active and not state.power.can_redact_others(admin.bot):
        warn(f"the bot cannot enforce it yet: {enforcement_text(state, admin.bot, long=True)}")


@policy.command("set")
@click.argument("room")
@click.option("--after-send", metavar="DUR", help="Redact each message DUR after it was sent.")
@click.option("--after-read", metavar="DUR",
              help="Redact DUR after every member (or any: --readers) has read it.")
@click.option("--cap", metavar="DUR",
              help="With --after-read: the longest any message lives (default policy.default_cap).")
@click.option("--readers", type=click.Choice(["all", "any"]),
              help="With --after-read: whose reading counts (default all).")
@config_option
@click.pass_context
def set_policy(ctx: click.Context, room: str, after_send: str | None, after_read: str | None,
               cap: str | None, readers: str | None) -> None:
    """Set the policy of ROOM. Durations: 30s, 5m, 1h30m, 2d, 1w."""
    config = cli_config(ctx)
    new = build_policy(after_send, after_read, cap, readers, config.default_cap_ms)
    _write(config, room, new)


@policy.command()
@click.argument("room")
@config_option
@click.pass_context
def clear(ctx: click.Context, room: str) -> None:
    """Turn the policy of ROOM off: messages are kept."""
    _write(cli_config(ctx), room, Policy.off())


def _write(config: Config, room: str, new: Policy) -> None:
    async def go() -> None:
        async with admin_session(config) as admin:
            await apply_policy(admin, room, new)

    run_async(go)
