"""`lethe policy show|set|clear ROOM`: the room's retention policy, in its state.

Setting writes the same two state events the in-room command writes, as the bot's
account, so it works while the bot is stopped; the bot applies and announces it
when it next syncs. Where the room has the mirror on (``--retention``), it also
writes ``m.room.retention`` (bot/matrix/retention.py); a mirror it cannot write is a
warning, never a failure of the policy change.
"""

from __future__ import annotations

import click

from bot.cli.common import cli_config, config_option, run_async
from bot.cli.context import Admin, admin_session, duration_arg, readonly_store
from bot.cli.output import (
    bounds_json,
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
from bot.matrix.retention import Outcome, describe_content, keep_mirror, mirror_status

MIRROR_OPTION = click.option(
    "--retention/--no-retention", "mirror", default=None,
    help="Also mirror the policy into m.room.retention (MSC1763), by which Synapse purges "
         "where its retention feature is on; --no-retention withdraws it. Default: as the "
         "room has it.")


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
        mirror = mirror_status(state.policy, state.retention, state.power, admin.bot)
        bounds = bounds_json(state, config)
        if as_json:
            emit_json({
                "room_id": room_id,
                "policy": policy_json(state.policy),
                "bounds": bounds,
                "policy_sender": state.policy_sender,
                **enforcement(state, admin.bot),
                "policy_events": policy_events_json(state),
                "lethe_policy": policy_json(row.policy) if row else None,
                "retention": {
                    "mirror": state.policy.mirror_retention,
                    "content": None if state.retention.content is None
                    else dict(state.retention.content),
                    "sender": state.retention.sender,
                    "text": mirror,
                },
            })
            return
        fields([
            ("Room", state.title),
            ("Policy", bounds["text"]),
            ("Set by", state.policy_sender or "nobody (no policy in the room state)"),
            ("Enforced", enforcement_text(state, admin.bot, long=True)),
            *policy_lines(state, row, config),
            ("Mirror", mirror),
        ])

    run_async(go)


def build_policy(after_send: str | None, after_read: str | None, cap: str | None,
                 readers: str | None, default_cap_ms: int,
                 mirror: bool | None = None) -> Policy | None:
    """The policy the options describe (None: the room's rule stays, only ``mirror``
    changes); exit 2 for anything contradictory or malformed."""
    if after_send is None and after_read is None and mirror is not None \
            and cap is None and readers is None:
        return None
    if (after_send is None) == (after_read is None):
        raise UsageError("give exactly one of --after-send DUR or --after-read DUR (or "
                         "only --retention/--no-retention to change the mirror alone)")
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


async def apply_policy(admin: Admin, room: str, rule: Policy | None,
                       mirror: bool | None = None) -> None:
    """Write ``rule`` (None: the room's) as the room's policy, with the mirror opt-in
    ``mirror`` (None: the room's), after checking the bot may; prints what happened.
    Nothing is written when anything is wrong."""
    room_id = await admin.resolve_room(room)
    state = await admin.room_state(room_id)
    new = (state.policy if rule is None else rule).mirrored(
        state.policy.mirror_retention if mirror is None else mirror)
    outside = admin.config.bounds.for_room(room_id).check(new)  # bot/engine/bounds.py
    if outside is not None:
        raise CheckFailed(f"{room}: not allowed on this server: {outside}. Nothing was "
                          "changed.")
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
    done = await keep_mirror(admin.http, room_id, new, admin.bot, state.power, changed=True)
    problem = done.problem()
    if problem is not None:
        warn(f"{room}: {problem}.")
    elif done.outcome in (Outcome.WRITTEN, Outcome.IN_STEP):
        say(f"{room}: m.room.retention says {describe_content(done.found.content)}"
            + ("" if new.max_lifetime_ms is None else
               "; where the homeserver enables retention, it purges older messages, those "
               "sent before this policy too."))
    elif done.outcome is Outcome.WITHDRAWN:
        say(f"{room}: m.room.retention emptied (the mirror is withdrawn).")


@policy.command("set")
@click.argument("room")
@click.option("--after-send", metavar="DUR", help="Redact each message DUR after it was sent.")
@click.option("--after-read", metavar="DUR",
              help="Redact DUR after every member (or any: --readers) has read it.")
@click.option("--cap", metavar="DUR",
              help="With --after-read: the longest any message lives (default policy.default_cap).")
@click.option("--readers", type=click.Choice(["all", "any"]),
              help="With --after-read: whose reading counts (default all).")
@MIRROR_OPTION
@config_option
@click.pass_context
def set_policy(ctx: click.Context, room: str, after_send: str | None, after_read: str | None,
               cap: str | None, readers: str | None, mirror: bool | None) -> None:
    """Set the policy of ROOM. Durations: 30s, 5m, 1h30m, 2d, 1w."""
    config = cli_config(ctx)
    new = build_policy(after_send, after_read, cap, readers, config.default_cap_ms, mirror)
    _write(config, room, new, mirror)


@policy.command()
@click.argument("room")
@MIRROR_OPTION
@config_option
@click.pass_context
def clear(ctx: click.Context, room: str, mirror: bool | None) -> None:
    """Turn the policy of ROOM off: messages are kept."""
    _write(cli_config(ctx), room, Policy.off(), mirror)


def _write(config: Config, room: str, new: Policy | None, mirror: bool | None) -> None:
    async def go() -> None:
        async with admin_session(config) as admin:
            await apply_policy(admin, room, new, mirror)

    run_async(go)
