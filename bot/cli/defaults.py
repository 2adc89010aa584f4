"""`lethe defaults show USER`: a person's own defaults for new chats, as the bot keeps
them in its account data (bot/matrix/defaults.py), with the bot's saved login.
Read-only: people set their defaults themselves, in a direct chat with the bot.
`lethe bridge defaults USER` (bridge/cli.py) shows the bridge's with ``show_defaults``.
"""

from __future__ import annotations

from typing import Any

import click

from bot.cli.common import cli_config, config_option, run_async
from bot.cli.context import admin_session
from bot.cli.output import emit_json, fields, json_option, say, warn
from bot.engine.ids import server_name
from bot.engine.policy import Policy
from bot.errors import UsageError
from bot.matrix.api import HttpReply, MatrixHttp
from bot.matrix.defaults import (
    RoomKind,
    UserDefaults,
    defaults_type,
    read_defaults,
    valid_user_id,
)


@click.group()
def defaults() -> None:
    """People's own defaults for new chats (set with `!lethe default` in a direct chat
    with the bot)."""


def checked_user(user: str) -> str:
    if not valid_user_id(user):
        raise UsageError(f"{user!r} is not a user id: give one like @alice:example.org")
    return user


async def fetch_defaults(http: MatrixHttp, owner: str, user: str) -> UserDefaults:
    """``user``'s defaults in ``owner``'s account data; a user of ``owner``'s own server
    with none who does not exist is a UsageError (exit 2)."""
    found = await read_defaults(http, owner, user)
    if found.empty and not found.problems and server_name(user) == server_name(owner):
        reply: HttpReply = await http.profile(user)
        if reply.status == 404:
            raise UsageError(f"unknown user {user}: no such user on {server_name(owner)}")
    return found


def _policy(policy: Policy | None) -> dict[str, Any] | None:
    return None if policy is None else policy.to_state()


def show_defaults(user: str, owner: str, found: UserDefaults, without: str,
                  on_join: Policy | None, as_json: bool) -> None:
    """Print them; ``without``: what applies where a person has none."""
    if as_json:
        emit_json({"user_id": user, "account_data_type": defaults_type(user),
                   "dm": _policy(found.dm), "group": _policy(found.group),
                   "problems": list(found.problems), "on_join": _policy(on_join)})
        return
    lines = [("User", user)]
    for kind, name in ((RoomKind.DM, "Direct chats"), (RoomKind.GROUP, "Groups")):
        policy = found.get(kind)
        lines.append((name, "no default" if policy is None else policy.describe()))
    lines.append(("Without one", without))
    fields(lines)
    for problem in found.problems:
        warn(f"{problem}; the user can set it again")
    if found.empty:
        say(f"({user} has set no defaults with {owner})")


@defaults.command()
@click.argument("user")
@config_option
@json_option
@click.pass_context
def show(ctx: click.Context, user: str, as_json: bool) -> None:
    """The defaults USER (a full user id, @name:server) set for new direct chats and
    groups, and the server's policy.on_join that applies without them."""
    config = cli_config(ctx)
    checked_user(user)

    async def go() -> None:
        async with admin_session(config) as admin:
            found = await fetch_defaults(admin.http, admin.bot, user)
        on_join = config.on_join
        show_defaults(user, admin.bot, found, "policy.on_join: " + (
            on_join.describe() if on_join else "none (rooms start without)"), on_join,
            as_json)

    run_async(go)
