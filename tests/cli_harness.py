"""Running `lethe` commands from async tests, with click's CliRunner.

The command runs in a worker thread (it calls asyncio.run itself) while the test's
event loop keeps running: a bot started by the test goes on syncing and redacting
meanwhile, as it would while an operator runs the CLI next to `lethe run`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner, Result

from bot.cli.main import main
from bot.config import Config
from tests.harness import BotHandle, Person, eventually


async def lethe_cli(config: Config, *args: str, input: str | None = None) -> Result:
    """``lethe -c CONFIG ARGS...``. Unexpected exceptions are raised, not swallowed."""
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, ["-c", str(config.path), *args], input=input,
        catch_exceptions=False,
    )


def out_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def text_fields(stdout: str) -> dict[str, str]:
    """``Key: value`` lines (as `rooms show` and `policy show` print them); the first
    of each key."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key[0].isspace():
            fields.setdefault(key, value.strip())
    return fields


def one_line_error(result: Result) -> str:
    """The single `lethe: ...` line an expected failure prints, with no traceback."""
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("lethe: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def add_alias(person: Person, room_id: str, alias: str) -> None:
    status, data = await person.api("PUT", f"/directory/room/{quote(alias)}",
                                    {"room_id": room_id})
    assert status == 200, data


async def logged_in(handle: BotHandle) -> None:
    """Start the bot once and stop it: it has logged in and created its database."""
    await handle.start()
    await handle.stop()


async def scheduled(handle: BotHandle, *event_ids: str) -> None:
    """Wait until the running bot has stored these events (on its schedule)."""
    assert handle.bot is not None and handle.bot.engine is not None
    engine = handle.bot.engine

    async def known() -> bool:
        return await engine.tracked(event_ids) == set(event_ids)

    await eventually(known, 30, what="the events in the bot's database")
