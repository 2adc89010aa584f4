"""Test people and a bot runner, against the real Synapse the fixtures start.

``Person`` is a real E2EE matrix-nio client with its own device and key store:
rooms in tests are encrypted, as in real life.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bot.config import Config, load_config
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person, eventually, stays
from bot.front.bot import LetheBot

__all__ = [
    "REPO", "BotHandle", "LetheProcess", "Person", "all_redacted", "bot_room", "clean_env",
    "eventually", "lethe_argv", "not_redacted", "stays", "unique", "write_bot_config",
]

REPO = Path(__file__).resolve().parent.parent

_names = itertools.count(1)


def lethe_argv(*args: str) -> list[str]:
    """The command line of ``lethe ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "bot.cli", *args]


def clean_env() -> dict[str, str]:
    """This environment without LETHE_* overrides, with unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LetheProcess:
    """``lethe ARGS`` as a real process, its output appended to a file."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *lethe_argv(*self.args), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=REPO, env=clean_env())

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def signal(self, sig: signal.Signals, timeout: float = 30) -> int:
        """Send ``sig`` and return the exit code, waiting at most ``timeout`` s."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def not_redacted(person: Person, room: str, *events: str) -> Any:
    """A predicate for ``stays``/``eventually``: none of ``events`` is redacted yet."""
    async def check() -> bool:
        for event in events:
            if await person.is_redacted(room, event):
                return False
        return True
    return check


def all_redacted(person: Person, room: str, *events: str) -> Any:
    """A predicate for ``eventually``: every one of ``events`` is redacted."""
    async def check() -> bool:
        for event in events:
            if not await person.is_redacted(room, event):
                return False
        return True
    return check


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}x{secrets.token_hex(2)}"


@dataclass
class BotHandle:
    """A Lethe bot running in this event loop, as `lethe run` would run it."""

    config: Config
    bot: LetheBot | None = None
    task: asyncio.Task[None] | None = None
    stop_event: asyncio.Event | None = None

    @property
    def user_id(self) -> str:
        return self.config.bot.user_id

    async def start(self) -> LetheBot:
        self.bot = LetheBot(self.config)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.bot.run_until(self.stop_event))
        bot = self.bot
        await eventually(lambda: bot.sync_count >= 1 or self.task.done(), 60, what="first sync")
        if self.task.done():
            self.task.result()
        return bot

    async def stop(self) -> None:
        if self.stop_event is not None and self.task is not None:
            self.stop_event.set()
            await asyncio.wait_for(self.task, 30)
        self.task = None

    async def synced_after(self) -> None:
        """Wait for one more completed sync (everything up to now is persisted)."""
        assert self.bot is not None
        target = self.bot.sync_count + 2
        bot = self.bot
        await eventually(lambda: bot.sync_count >= target, 45, what="bot sync")


def write_bot_config(hs: LocalSynapse, directory: Path, **overrides: Any) -> Config:
    localpart = unique("lethe")
    password = secrets.token_urlsafe(16)
    hs.register(localpart, password)
    data: dict[str, Any] = {
        "homeserver": {"url": hs.base_url},
        "bot": {"user_id": f"@{localpart}:{hs.server_name}", "password": password},
        "data_dir": str(directory / "data"),
        "e2ee": {"pickle_key": secrets.token_hex(16)},
        "policy": {"default_cap": "1h"},
        "logging": {"level": "DEBUG"},
    }
    for key, value in overrides.items():
        data[key] = value
    path = directory / "lethe.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def bot_room(
    people: Any, lethe: BotHandle, *others: str, bot_power: int | None = 50,
    policy: str | None = None, encrypted: bool = True,
) -> tuple[Person, list[Person], str]:
    """alice creates an encrypted room (unless not ``encrypted``) with ``others`` and the
    bot (given ``bot_power``), everyone joins, the bot runs and greets; with ``policy``
    (e.g. "after-send 3s") alice sets it and waits for the bot's announcement."""
    alice = await people("alice")
    members = [await people(name) for name in others]
    power = {lethe.user_id: bot_power} if bot_power is not None else None
    room = await alice.create_room([*(m.user_id for m in members), lethe.user_id], power=power,
                                   encrypted=encrypted)
    for member in members:
        await member.join(room)
    if lethe.task is None:
        await lethe.start()
    await alice.wait_notice(room, "Lethe is here")
    if policy is not None:
        await alice.send(room, f"!lethe {policy}")
        await alice.wait_notice(room, f"changed the retention policy: {policy}")
    return alice, members, room
