"""The `lethe` command line. The administration commands live in bot/cli/ and are
registered here; docs/cli.md describes them all.

Exit codes: 0 ok, 1 a check failed (or the room refused: no power), 2 usage error
or unknown room, 3 config or database error, 4 homeserver unreachable or login
failed. Expected failures print one clear line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import click

from bot.config import Config, ConfigError, load_config
from bot.engine.store import StoreError
from bot.runlock import BOT_LOCK, AlreadyRunning, hold

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_HOMESERVER = 4

QUIET_LIBRARIES = ("nio", "peewee", "aiohttp", "aiosqlite", "asyncio")

log = logging.getLogger("bot.cli")

T = TypeVar("T")


class Fail(click.ClickException):
    """An expected failure: message and exit code, no traceback."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: object = None) -> None:
        # Imported here: the bot itself never loads the admin commands.
        from bot.cli.output import say

        say(f"lethe: {self.format_message()}", err=True)  # may quote the homeserver


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Third-party libraries stay quieter than Lethe itself (nio logs whole responses,
    # tokens included, at DEBUG).
    # Never louder than Lethe's own level: `lethe demo` (ERROR) tells only its story.
    chosen = logging.getLevelName(level)
    quiet = logging.INFO if level == "DEBUG" else max(
        logging.WARNING, chosen if isinstance(chosen, int) else logging.WARNING)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    # nio warns about every redacted encrypted event failing its schema: expected here.
    logging.getLogger("nio.events").setLevel(logging.ERROR)


def cli_config(ctx: click.Context) -> Config:
    """The config named by -c/--config (or $LETHE_CONFIG), loaded and validated."""
    path = ctx.obj.get("config_path")
    if path is None:
        raise Fail("no config given: use lethe -c CONFIG ... (see config.example.yaml)", EXIT_USAGE)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None


F = TypeVar("F", bound=Callable[..., object])


def config_option(command: F) -> F:
    """-c/--config after the command name too (`lethe rooms list -c lethe.yaml`)."""

    def remember(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.ensure_object(dict)["config_path"] = value

    return click.option(
        "-c", "--config", type=click.Path(path_type=Path), expose_value=False,
        callback=remember, help="Config file (YAML); may also come before the command.",
    )(command)


class Lethe(click.Group):
    """The `lethe` group. Commands are imported only when used: the bot never imports
    the bridge, and `lethe run` does not load the administration commands."""

    lazy = {
        "audit": "bot.cli.audit:audit",
        "bridge": "bridge.cli:bridge",
        "doctor": "bot.cli.doctor:doctor",
        "pending": "bot.cli.pending:pending",
        "policy": "bot.cli.policy:policy",
        "purge": "bot.cli.purge:purge",
        "rooms": "bot.cli.rooms:rooms",
    }

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


def run_async(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning the expected failures into exit codes."""
    from bot.matrix.api import HomeserverUnavailable
    from bot.matrix.credentials import LoginFailed

    async def main() -> T:
        return await coro_factory()

    try:
        return asyncio.run(main())
    except ConfigError as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None
    except LoginFailed as exc:
        raise Fail(str(exc), EXIT_HOMESERVER) from None
    except (HomeserverUnavailable, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise Fail(f"homeserver unreachable: {type(exc).__name__}: {exc}", EXIT_HOMESERVER) \
            from None
    except (StoreError, AlreadyRunning) as exc:
        raise Fail(str(exc), EXIT_CONFIG) from None


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
        raise Fail("--reset-identity needs the bot's password: set LETHE_PASSWORD",
                   EXIT_USAGE)

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
            raise Fail(f"logged in as {creds.user_id}, device {creds.device_id}, but the "
                       f"device is not cross-signed: {exc}", EXIT_CHECK_FAILED) from None
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
        raise Fail(f"no identity of {user_id} is pinned", EXIT_USAGE)


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set, for `run_until` (call it in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


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
        raise Fail(str(exc), EXIT_CONFIG) from None
    except DemoError as exc:
        raise Fail(str(exc), EXIT_CHECK_FAILED) from None


if __name__ == "__main__":
    main()
