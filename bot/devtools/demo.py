"""`lethe demo`: a throwaway Synapse on loopback, a bot, two people, an encrypted room,
and messages disappearing on schedule, shown with timestamps: after sending, after
reading, on time by the homeserver itself while the bot is stopped, and what the
homeserver still stores afterwards (`lethe audit --erasure`). Everything is stopped
and removed at the end (unless --keep)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bot.config import load_config
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.people import Person, eventually
from bot.devtools.synapseconfig import delayed_redactions
from bot.engine.policy import parse_duration
from bot.front.bot import LetheBot
from bot.matrix.delayed import listed
from bot.matrix.files import write_secret
from bot.matrix.pins import PINNED_EVENTS_TYPE

# Long enough for the bot to hand the homeserver a delayed redaction and stop before
# the message is due (bot/engine/delayed.py MIN_LEAD_MS: nothing due sooner is armed).
STOPPED_TIMER = "15s"


class DemoError(RuntimeError):
    """The demo did not see what it expected."""


def _stamp() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


async def run_demo(timer: str = "5s", keep: bool = False,
                   echo: Callable[[str], None] = print) -> None:
    timer_ms = parse_duration(timer)
    workdir = Path(tempfile.mkdtemp(prefix="lethe-demo-"))

    def say(text: str) -> None:
        echo(f"[{_stamp()}] {text}")

    # Delayed events and redactions through /send on: the homeserver itself redacts each
    # message at its deadline, even while the bot is stopped (bot/engine/delayed.py).
    hs = LocalSynapse(workdir / "synapse", extra_config=delayed_redactions())
    say(f"starting a throwaway Synapse on {hs.base_url} (SQLite in {workdir})")
    await asyncio.to_thread(hs.start)
    people: list[Person] = []
    bot: LetheBot | None = None
    stop = asyncio.Event()
    runner: asyncio.Task[None] | None = None
    try:
        password = secrets.token_urlsafe(16)
        hs.register("lethe", password)
        # A homeserver admin's token lets Lethe delete media and ask what the server
        # still stores (never the bot's own login; a file of mode 0600).
        admin_token = workdir / "admin-token"
        write_secret(admin_token, hs.register("admin", admin=True).access_token,
                     secure_parent=False)
        config_path = workdir / "lethe.yaml"
        config_path.write_text(yaml.safe_dump({
            "homeserver": {"url": hs.base_url},
            "bot": {"user_id": f"@lethe:{hs.server_name}", "password": password},
            "data_dir": str(workdir / "lethe-data"),
            "e2ee": {"pickle_key": secrets.token_hex(32)},
            "policy": {"default_cap": "1m"},
            "erasure": {"admin_token_file": str(admin_token)},
        }))
        config = load_config(config_path)
        alice = Person(hs, "alice", workdir / "alice")
        bob = Person(hs, "bob", workdir / "bob")
        people = [alice, bob]
        for person in people:
            await person.start()
        bot = LetheBot(config)
        runner = asyncio.create_task(bot.run_until(stop))
        say(f"bot {config.bot.user_id} running; people {alice.user_id} and {bob.user_id}")

        room = await alice.create_room([bob.user_id, config.bot.user_id],
                                       power={config.bot.user_id: 50})
        await bob.join(room)
        say(f"alice created an end-to-end encrypted room {room} and invited bob and the bot")
        await alice.wait_notice(room, "Lethe is here", timeout=60)
        say("the bot joined")

        await alice.send(room, f"!lethe after-send {timer}")
        await alice.wait_notice(room, "changed the retention policy")
        say(f"alice set the policy: after-send {timer}")
        sent: list[tuple[str, float]] = []
        for number in range(1, 4):
            event_id = await alice.send(room, f"demo message {number}")
            sent.append((event_id, time.monotonic()))
            say(f"alice sent message {number} ({event_id})")
            await asyncio.sleep(0.5)
        for number, (event_id, sent_at) in enumerate(sent, 1):
            await _await_redaction(bob, room, event_id, timer_ms / 1000 + 30)
            say(f"message {number} redacted, as bob sees it, "
                f"{time.monotonic() - sent_at:.1f} s after it was sent")
        pinned = await _pinned_notice(bob, room)
        say(f"the policy notice ({pinned}) is pinned at the top of the room: it stays "
            "while the messages go")

        await alice.send(room, "!lethe after-read 3s cap 1m")
        await alice.wait_notice(room, "after-read 3s")
        say("alice set the policy: after-read 3s, cap 1m (bob must read it first)")
        event_id = await alice.send(room, "read me, then I am gone")
        say(f"alice sent a message ({event_id}); bob has not read it")
        await asyncio.sleep(4)
        if await bob.is_redacted(room, event_id):
            raise DemoError("the unread message was redacted before bob read it")
        say("4 s later it is still there: nobody has read it")
        await bob.receipt(room, event_id)
        read_at = time.monotonic()
        say("bob read it (public read receipt)")
        await _await_redaction(bob, room, event_id, 30)
        say(f"redacted {time.monotonic() - read_at:.1f} s after bob read it")

        # Timers for one message, shorter than the room's rule (nobody reads these).
        event_id = await alice.send_event(room, "m.room.message", {
            "msgtype": "m.text", "body": "this one carries its own 2 s timer",
            "com.beeper.disappearing_timer": {"type": "after_send", "timer": 2000}})
        sent_at = time.monotonic()
        say(f"alice sent a message with a timer of its own, after-send 2s ({event_id})")
        await _await_redaction(bob, room, event_id, 30)
        say(f"redacted {time.monotonic() - sent_at:.1f} s after it was sent, unread: its own "
            "timer shortened the room's rule for it")
        event_id = await alice.send(room, "I should not have said that")
        command = await alice.send(room, "!lethe expire 2s", relates_to={
            "m.in_reply_to": {"event_id": event_id}})
        sent_at = time.monotonic()
        say(f"alice replied to her message ({event_id}) with `!lethe expire 2s`")
        for gone in (event_id, command):
            await _await_redaction(bob, room, gone, 30)
        say(f"the message and the command redacted {time.monotonic() - sent_at:.1f} s later")

        # Deletion that does not depend on the bot running.
        await alice.send(room, f"!lethe after-send {STOPPED_TIMER}")
        await alice.wait_notice(room, f"after-send {STOPPED_TIMER}")
        say(f"alice set the policy: after-send {STOPPED_TIMER}")
        event_id = await alice.send(room, "due while the bot is stopped")
        sent_at = time.monotonic()
        say(f"alice sent a message ({event_id})")
        first = bot
        assert first.engine is not None
        if not (await first.engine.delayed_status()).in_use:
            raise DemoError("the homeserver does not take delayed redactions")
        await _until(lambda: _armed(first, event_id), 20, "the delayed redaction")
        before = await _redacted_count(first, room)
        say("the bot handed the homeserver a delayed redaction for its deadline "
            "(MSC4140 delayed events, MSC4169 redaction through /send)")
        stop.set()
        await runner
        say("the bot is stopped")
        await _await_redaction(bob, room, event_id, parse_duration(STOPPED_TIMER) / 1000 + 30)
        say(f"redacted by the homeserver itself {time.monotonic() - sent_at:.1f} s after it "
            "was sent, as bob sees it, while the bot was stopped")
        stop = asyncio.Event()
        bot = again = LetheBot(config)
        runner = asyncio.create_task(again.run_until(stop))
        await _until(lambda: _counted(again, room, before + 1), 60, "the restarted bot's count")
        say("the bot, started again, counted that redaction once, as its own")

        # What the homeserver still stores, asked with the admin token.
        audit = await _audit(config_path, room)
        say(f"`lethe audit ROOM --erasure` asked the homeserver about the {audit['checked']} "
            f"redactions Lethe made here: {audit['held']} originals still stored in "
            f"Synapse's database, {audit['erased']} erased, {audit['purged']} purged")
        say("Synapse keeps originals for redaction_retention_period (7 days by default): "
            "set it lower, or purge with `lethe purge ROOM --older-than DUR --hard`, and "
            "the audit shows them erased")
    finally:
        stop.set()
        if runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 30)
        for person in people:
            await person.close()
        await asyncio.to_thread(hs.stop)
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            say("stopped Synapse and removed the temporary directory")


async def _armed(bot: LetheBot, event_id: str) -> bool:
    """Whether the homeserver holds a delayed redaction of ``event_id`` (its own list)."""
    if bot.http is None:
        return False
    reply = await bot.http.delayed_events()
    return reply.ok and any(item.target == event_id for item in listed(reply.body))


async def _redacted_count(bot: LetheBot, room: str) -> int:
    status = await bot.engine.status(room) if bot.engine is not None else None
    return status.redacted if status is not None else 0


async def _counted(bot: LetheBot, room: str, count: int) -> bool:
    return bot.sync_count > 0 and await _redacted_count(bot, room) >= count


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        await eventually(check, timeout, interval=0.2, what=what)
    except AssertionError as exc:
        raise DemoError(str(exc)) from None


async def _pinned_notice(person: Person, room: str) -> str:
    """The bot's pinned policy notice as ``person`` sees it, still there."""
    found: list[str] = []

    async def pinned() -> bool:
        found[:] = (await person.get_state(room, PINNED_EVENTS_TYPE) or {}).get("pinned", [])
        return bool(found)

    await _until(pinned, 30, "the policy notice pinned")
    if await person.is_redacted(room, found[-1]):
        raise DemoError("the pinned policy notice was redacted")
    return found[-1]


async def _audit(config_path: Path, room: str) -> dict[str, Any]:
    """`lethe audit ROOM --erasure --json`, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "-c", str(config_path), "audit", room, "--erasure",
        "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise DemoError(f"lethe audit --erasure failed: {err.decode(errors='replace')}") \
            from None
    return report


async def _await_redaction(person: Person, room: str, event_id: str, timeout: float) -> None:
    try:
        await eventually(lambda: person.is_redacted(room, event_id), timeout, interval=0.2,
                         what=f"redaction of {event_id}")
    except AssertionError as exc:
        raise DemoError(str(exc)) from None
