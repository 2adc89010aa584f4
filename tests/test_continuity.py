"""Continuity against the real Synapse: a gap after downtime is read in full or not
committed, a gap too long to read still applies its state and is reported, a lost
database is rebuilt from history without running old commands, one process per
data_dir, and a flood of commands does not become a flood of notices.

Rooms are encrypted, as in real life.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.runlock import BOT_LOCK, hold
from tests.harness import (
    REPO,
    BotHandle,
    LetheProcess,
    bot_room,
    clean_env,
    eventually,
    lethe_argv,
    not_redacted,
    stays,
)
from tests.test_faults import all_redacted, count_redacted
from tests.test_restart_privacy import persisted

LIMIT_10 = {"room": {"timeline": {"limit": 10}}}


def small_timeline(monkeypatch: Any) -> None:
    """A sync timeline of 10 events, so a gap of a few dozen messages is one."""
    monkeypatch.setattr("bot.front.sync.SYNC_FILTER", LIMIT_10)


async def send_many(person: Any, room: str, count: int, what: str) -> list[str]:
    return [await person.send(room, f"{what} {i}") for i in range(count)]


# --- 11. a gap is read in full, or its sync is not stored -----------------------------

GAP = 140


async def test_a_failed_history_page_is_retried_and_nothing_in_the_gap_is_lost(
    people, lethe, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.INFO)
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 3s")
    await persisted(lethe, bob, room)
    await lethe.stop()
    sent = await send_many(alice, room, GAP, "sent while the bot was away")

    small_timeline(monkeypatch)
    real = MatrixHttp.messages
    calls = 0

    async def second_page_fails(self: MatrixHttp, room_id: str, *args: Any,
                                **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first page was read: its progress must not be committed
            raise HomeserverUnavailable("GET /messages: ClientOSError (injected)")
        return await real(self, room_id, *args, **kwargs)

    monkeypatch.setattr(MatrixHttp, "messages", second_page_fails)
    again = BotHandle(lethe.config)
    try:
        await again.start()
        await eventually(lambda: all_redacted(bob, room, sent), 60, interval=0.5,
                         what=f"all {GAP} messages of the gap redacted")
        assert calls >= 3, "the failed page was not tried again"
        assert "a gap could not be read" in caplog.text
        assert "not tracked" not in caplog.text
    finally:
        await again.stop()


LONG_GAP = 130


async def test_a_gap_too_long_to_read_applies_its_state_and_reports_what_was_missed(
    people, lethe, caplog, monkeypatch
) -> None:
    """The policy is set while the bot is away, in the part of the gap the bot does not
    read: it still applies to what the bot does read, and status names the span."""
    caplog.set_level(logging.INFO)
    alice, (bob,), room = await bot_room(people, lethe, "bob")  # no policy yet
    await persisted(lethe, bob, room)
    await lethe.stop()
    assert await alice.put_state(room, "chat.lethe.policy",
                                 {"mode": "after_send", "timer_ms": 2000}) == 200
    sent = await send_many(alice, room, LONG_GAP, "after the policy")

    small_timeline(monkeypatch)
    monkeypatch.setattr("bot.front.catchup.BACKFILL_PAGES", 1)  # 100 events
    again = BotHandle(lethe.config)
    try:
        await again.start()
        # 10 in the timeline and 100 read back: under the policy from the unread part.
        read, missed = sent[-110:], sent[:-110]
        await eventually(lambda: all_redacted(bob, room, read), 30, interval=0.5,
                         what="the messages read redacted under the policy set in the gap")
        assert await stays(not_redacted(bob, room, *missed[-3:]), 2), \
            "a message the bot never read was redacted"
        assert await count_redacted(bob, room, missed) == 0
        assert "not tracked" in caplog.text and "longer than 100 events" in caplog.text
        await alice.send(room, "!lethe status")
        status = await alice.wait_notice(room, "Not tracked:")
        assert "after-send 2s" in status, status
        assert "longer than 100 events" in status, status
    finally:
        await again.stop()


# --- 12. a lost database is rebuilt from history ----------------------------------------

REBUILT = 130


def lose_database(config: Any) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = config.database.path.with_name(config.database.path.name + suffix)
        path.unlink(missing_ok=True)


async def test_a_lost_database_is_rebuilt_from_history_and_no_command_runs_again(
    people, lethe, caplog
) -> None:
    caplog.set_level(logging.INFO)
    # Room A: commands not yet redacted (a long timer) when the database is lost.
    alice, (bob,), room_a = await bot_room(people, lethe, "bob", policy="after-send 1h")
    await alice.send(room_a, "!lethe help")
    await alice.wait_notice(room_a, "help: this text")
    # Room B: a short timer, and more messages than one sync timeline holds.
    room_b = await alice.create_room([bob.user_id, lethe.user_id],
                                     power={lethe.user_id: 50})
    await bob.join(room_b)
    await alice.wait_notice(room_b, "Lethe is here")
    await alice.send(room_b, "!lethe after-send 3s")
    await alice.wait_notice(room_b, "changed the retention policy: after-send 3s")
    await persisted(lethe, bob, room_b)
    await lethe.stop()

    lose_database(lethe.config)
    sent = await send_many(alice, room_b, REBUILT, "scheduled before the database was lost")
    again = BotHandle(lethe.config)
    try:
        await again.start()
        await eventually(lambda: all_redacted(bob, room_b, sent), 60, interval=0.5,
                         what=f"all {REBUILT} messages redacted after the rebuild")
        # Commands after the rebuild run; the action queue is in order, so once this is
        # answered, whatever the rebuild queued has been handled.
        await alice.send(room_a, "!lethe status")
        status = await alice.wait_notice(room_a, "Redacted so far")
        assert "after-send 1h" in status, status
        notices = await alice.notices(room_a, limit=100)
        assert sum("help: this text" in n for n in notices) == 1, "!lethe help ran again"
        assert sum("changed the retention policy" in n for n in notices) == 1, \
            "the policy command ran again"
        for room in (room_a, room_b):
            assert sum("Lethe is here" in n for n in await alice.notices(room, limit=200)) \
                <= 1, "greeted a room it had been in all along"
        assert "rebuilt the schedule of 2 room(s)" in caplog.text
    finally:
        await again.stop()


# --- 13. one process per data_dir -------------------------------------------------------


def lock_holder(path: Path) -> str:
    try:
        return path.read_text().split(" ", 1)[0]
    except OSError:
        return ""


async def test_a_second_bot_on_the_same_data_dir_refuses_to_start(lethe, tmp_path) -> None:
    config = lethe.config
    lock = config.data_dir / BOT_LOCK
    first = LetheProcess(["-c", str(config.path), "run"], tmp_path / "first.log")
    second = LetheProcess(["-c", str(config.path), "run"], tmp_path / "second.log")
    third = LetheProcess(["-c", str(config.path), "run"], tmp_path / "third.log")
    await first.start()
    try:
        assert first.proc is not None
        await eventually(lambda: lock_holder(lock) == str(first.proc.pid)
                         or first.returncode is not None, 60, what="the first bot's lock")
        assert first.returncode is None, first.output()
        await second.start()
        assert second.proc is not None
        code = await asyncio.wait_for(second.proc.wait(), 60)
        output = second.output()
        assert code == 3, output
        assert "already running" in output and str(lock) in output, output
        assert f"pid {first.proc.pid}" in output, output
        assert "Traceback" not in output
        # The administration commands read the database next to it: no lock for them.
        listed = await asyncio.to_thread(
            subprocess.run, lethe_argv("-c", str(config.path), "rooms", "list"),
            capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env(),
            stdin=subprocess.DEVNULL)
        assert listed.returncode == 0, listed
        assert first.returncode is None
        assert await first.signal(signal.SIGTERM) == 0, first.output()[-2000:]
        # A lock file left behind is no lock: the next start runs.
        await third.start()
        assert third.proc is not None
        await eventually(lambda: lock_holder(lock) == str(third.proc.pid)
                         or third.returncode is not None, 60, what="the third bot's lock")
        assert third.returncode is None, third.output()
        assert await third.signal(signal.SIGTERM) == 0
    finally:
        for proc in (first, second, third):
            await proc.close()


async def test_a_second_bridge_on_the_same_database_refuses_to_start(tmp_path) -> None:
    """The bridge's run command takes the same lock (next to its own database, so a bot
    and a bridge may share a data_dir). The first holder is a process holding it
    through the shared helper, as a running bridge does."""
    data = tmp_path / "data"
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"url": "http://127.0.0.1:9"},
        "data_dir": str(data),
        "bridge": {"user_id": "@lethe-bridge:localhost",
                   "registration": str(tmp_path / "registration.yaml")},
    }))
    lock = data / "bridge.lock"
    holder = await asyncio.create_subprocess_exec(
        lethe_argv()[0], "-c",
        "import sys, time; from pathlib import Path; from bot.runlock import hold; "
        f"hold(Path({str(lock)!r}), 'lethe bridge run'); print('held', flush=True); "
        "time.sleep(120)",
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env=clean_env())
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        result = await asyncio.to_thread(
            subprocess.run, lethe_argv("-c", str(path), "bridge", "run"),
            capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env(),
            stdin=subprocess.DEVNULL)
        assert result.returncode == 3, result
        assert "already running" in result.stderr and str(lock) in result.stderr, result
        assert f"pid {holder.pid}" in result.stderr
        assert "Traceback" not in result.stderr
        # The bot's lock on the same data_dir is another file: both may run.
        with hold(data / BOT_LOCK, "lethe run"):
            pass
    finally:
        holder.kill()
        await holder.wait()


# --- 17. a flood of commands is not a flood of notices -----------------------------------

FLOOD = 30


async def test_a_flood_of_help_from_a_member_without_power_gets_a_couple_of_notices(
    people, lethe
) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    for _ in range(FLOOD):
        await bob.send(room, "!lethe help")
    # alice is not held back by bob's flood; her answer comes after every one of bob's
    # commands was handled (one action queue, in order).
    await alice.send(room, "!lethe status")
    await alice.wait_notice(room, "Redacted so far", timeout=60)
    notices = await alice.notices(room, limit=100)
    answered = sum("help: this text" in n for n in notices)
    assert 1 <= answered <= 2, answered
