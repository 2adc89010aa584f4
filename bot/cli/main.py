"""The `lethe` command line. The administration commands live in bot/cli/ and are
registered here; docs/cli.md describes them all.

Exit codes: 0 ok, 1 a check failed (or the room refused: no power), 2 usage error
or unknown room, 3 config or database error, 4 homeserver unreachable or login
failed. Expected failures (bot/errors.py) print one clear line, never a traceback:
`Lethe.invoke` is the one place that turns them into that line and their exit code
(bot/cli/common.py, EXIT_CODES). Only the entry point imports this module; the
commands share bot/cli/common.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from bot.cli.common import (
    cli_config,
    config_option,
    exit_code,
    run_async,
    setup_logging,
    stop_on_signals,
)
from bot.errors import CheckFailed, LetheError, SetupError, UsageError
from bot.runlock import BOT_LOCK, hold

log = logging.getLogger("bot.cli")


class Lethe(click.Group):
    """The `lethe` group. Commands are imported only when used: the bot never imports
    the bridge, and `lethe run` does not load the administration commands."""

    lazy = {
        "audit": "bot.cli.audit:audit",
        "bridge": "bridge.cli:bridge",
        "config": "bot.cli.config:config",
        "db": "bot.cli.db:db",
        "defaults": "bot.cli.defaults:defaults",
        "doctor": "bot.cli.doctor:doctor",
        "pending": "bot.cli.pending:pending",
        "policy": "bot.cli.policy:policy",
        "purge": "bot.cli.purge:purge",
        "rooms": "bot.cli.rooms:rooms",
    }

    def invoke(self, ctx: click.Context) -> Any:
        # The CLI's edge: every expected failure of every command ends here.
        try:
            return super().invoke(ctx)
        except LetheError as error:
            # Imported here: the bot itself never loads the admin commands.
            from bot.cli.output import say

            say(f"lethe: {error}", err=True)  # may quote the homeserver
            ctx.exit(exit_code(error))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            import importlib

            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                # An optional part that is not installed; a missing dependency of an
                # installed one is a real error.
                if exc.name is None or not f"{module_name}.".startswith(f"{exc.name}."):
                    raise
                return None
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=Lethe)
@click.option(
    "-c", "--config", "config_path", type=click.Path(path_type=Path), envvar="LETHE_CONFIG",
    help="Config file (YAML). Also $LETHE_CONFIG.",
)
@click.version_option(package_name="lethe-matrix")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Lethe: disappearing messages for Matrix."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@config_option
@click.option("--reset-identity", is_flag=True,
              help="Replace the bot's cross-signing identity with a new one (needs "
                   "LETHE_PASSWORD); for a lost or replaced key store.")
@click.pass_context
def login(ctx: click.Context, reset_identity: bool) -> None:
    """Log in once with the password, save the device (token file mode 0600), and
    cross-sign it with the bot's own identity (created on first use)."""
    from bot.front.client import ensure_own_identity
    from bot.front.client import login as do_login
    from bot.matrix.api import MatrixHttp
    from bot.matrix.crosssigning import IdentityError, fingerprint

    config = cli_config(ctx)
    setup_logging(config.log_level)
    if reset_identity and not config.bot.password:
        raise UsageError("--reset-identity needs the bot's password: set LETHE_PASSWORD")

    async def go() -> None:
        # It opens the key store and may rewrite the identity: never next to `lethe run`.
        with hold(config.data_dir / BOT_LOCK, "lethe login"):
            await log_in()

    async def log_in() -> None:
        client, creds = await do_login(config)
        http = MatrixHttp(config.homeserver.url, creds.access_token)
        try:
            if client.should_upload_keys:
                await client.keys_upload()
            identity = await ensure_own_identity(config, client, http, creds,
                                                 reset=reset_identity)
        except IdentityError as exc:
            raise CheckFailed(f"logged in as {creds.user_id}, device {creds.device_id}, but "
                              f"the device is not cross-signed: {exc}") from None
        finally:
            await http.close()
            await client.close()
        from bot.cli.output import say  # the device id comes from the homeserver

        say(f"logged in as {creds.user_id}, device {creds.device_id}; "
            f"saved in {config.credentials_path}")
        say(f"cross-signed: master key {fingerprint(identity.master)}"
            + (" (new identity)" if identity.created else ""))

    run_async(go)


@main.group()
def trust() -> None:
    """Identities pinned for `e2ee.trust: verified`."""


@trust.command("accept")
@config_option
@click.argument("user_id")
@click.pass_context
def trust_accept(ctx: click.Context, user_id: str) -> None:
    """Accept USER_ID's new cross-signing identity (it is pinned again when next seen)."""
    from bot.matrix.trust import IdentityPins

    config = cli_config(ctx)
    if IdentityPins(config.pinned_identities_path).forget(user_id):
        click.echo(f"forgot the pinned identity of {user_id}; the bot pins the one it sees "
                   "next and shares its notices with that user's cross-signed devices again")
    else:
        raise UsageError(f"no identity of {user_id} is pinned")


@main.command()
@config_option
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the bot until SIGINT or SIGTERM."""
    from bot.front.bot import LetheBot

    config = cli_config(ctx)
    setup_logging(config.log_level)

    async def go() -> None:
        bot = LetheBot(config)
        log.info("starting Lethe for %s on %s", config.bot.user_id, config.homeserver.url)
        await bot.run_until(stop_on_signals())
        log.info("stopped")

    run_async(go)


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (for inspection).")
@click.option("--timer", default="5s", show_default=True, help="after-send timer of the demo.")
def demo(keep: bool, timer: str) -> None:
    """Start a throwaway local Synapse and show messages disappearing."""
    from bot.devtools.demo import DemoError, run_demo
    from bot.devtools.localsynapse import SynapseNotInstalled

    setup_logging("ERROR")  # the demo narrates; library chatter would drown it
    try:
        asyncio.run(run_demo(timer=timer, keep=keep, echo=click.echo))
    except SynapseNotInstalled as exc:
        raise SetupError(str(exc)) from None
    except DemoError as exc:
        raise CheckFailed(str(exc)) from None


if __name__ == "__main__":
    main()
