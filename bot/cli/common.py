"""What the `lethe` commands share: exit codes, the config they were given, running
their coroutine, logging and signals.

Every command module imports this, never bot/cli/main.py: main.py loads the command
modules by name, and only the entry point imports it.
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

from bot.config import Config, load_config
from bot.errors import CheckFailed, HomeserverError, LetheError, SetupError, UsageError

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_HOMESERVER = 4

# Each kind of expected failure and its exit code; anything else of Lethe's is a
# failed check.
EXIT_CODES: tuple[tuple[type[LetheError], int], ...] = (
    (CheckFailed, EXIT_CHECK_FAILED),
    (UsageError, EXIT_USAGE),
    (SetupError, EXIT_CONFIG),
    (HomeserverError, EXIT_HOMESERVER),
)

QUIET_LIBRARIES = ("nio", "peewee", "aiohttp", "aiosqlite", "asyncio")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])


def exit_code(error: LetheError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_CHECK_FAILED


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


def config_path(ctx: click.Context, usage: str = "lethe -c CONFIG ...") -> Path:
    """The file named by -c/--config (or $LETHE_CONFIG); ``usage`` shows how to give it."""
    path = (ctx.find_root().obj or {}).get("config_path")
    if path is None:
        raise UsageError(f"no config given: use {usage} (see `lethe config example`)")
    return Path(path)


def cli_config(ctx: click.Context) -> Config:
    """The bot's config named by -c/--config (or $LETHE_CONFIG), loaded and validated."""
    return load_config(config_path(ctx))


def config_option(command: F) -> F:
    """-c/--config after the command name too (`lethe rooms list -c lethe.yaml`)."""

    def remember(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.ensure_object(dict)["config_path"] = value

    return click.option(
        "-c", "--config", type=click.Path(path_type=Path), expose_value=False,
        callback=remember, help="Config file (YAML); may also come before the command.",
    )(command)


def run_async(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; a failure to reach the homeserver becomes a HomeserverError."""

    async def main() -> T:
        return await coro_factory()

    try:
        return asyncio.run(main())
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise HomeserverError(f"homeserver unreachable: {type(exc).__name__}: {exc}") \
            from None


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set, for `run_until` (call it in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
