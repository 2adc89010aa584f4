"""Restarts, privacy of what the bot keeps and logs, secret file modes, and the CLI's
`run` command, against the real Synapse."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import yaml

from bot.cli.common import QUIET_LIBRARIES
from bot.config import Config
from bot.devtools.localsynapse import LocalSynapse, find_free_port
from tests.harness import (
    REPO,
    BotHandle,
    LetheProcess,
    Person,
    bot_room,
    clean_env,
    eventually,
    lethe_argv,
)

GAP_MESSAGES = 50  # well over Synapse's default sync timeline limit (10)


async def policy_room(people, lethe: BotHandle) -> tuple[Person, Person, str]:
    """alice (gives the bot power 50), bob and the bot in an encrypted room whose
    policy is after-send 3s; the bot is started."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 3s")
    return alice, bob, room


async def persisted(lethe: BotHandle, poker: Person, room: str) -> None:
    """Wait until the bot has completed two more syncs, so everything that happened up
    to now is persisted. Typing notifications (ephemeral: no timeline event) wake the
    bot's long-poll sync so an idle room does not make this take a minute."""
    bot = lethe.bot
    assert bot is not None
    target = bot.sync_count + 2
    path = f"/rooms/{quote(room)}/typing/{quote(poker.user_id)}"
    typing = True

    async def synced() -> bool:
        nonlocal typing
        if bot.sync_count >= target:
            return True
        status, _ = await poker.api("PUT", path, {"typing": typing, "timeout": 5000})
        assert status == 200
        typing = not typing
        return bot.sync_count >= target

    await eventually(synced, 30, interval=0.5, what="two more bot syncs")


def credentials(config: Config) -> dict[str, str]:
    return json.loads(config.credentials_path.read_text())


async def bot_devices(hs: LocalSynapse, token: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(
        hs.base_url + "/_matrix/client/v3/devices",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    return [d["device_id"] for d in data["devices"]]


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def files_containing(directory: Path, needle: bytes) -> list[str]:
    return [str(p) for p in files_under(directory) if needle in p.read_bytes()]




def shown_by_cli(record: logging.LogRecord) -> bool:
    """Whether `lethe run` at DEBUG would print this record."""
    library = record.name.split(".", 1)[0]
    return record.levelno >= logging.INFO or library not in QUIET_LIBRARIES


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


# --- 1. restart ---------------------------------------------------------------------


async def test_messages_sent_while_stopped_are_redacted_after_restart(
    people, lethe, synapse, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.INFO)
    alice, bob, room = await policy_room(people, lethe)
    # Everything up to the policy notice is persisted, then the bot goes away.
    await persisted(lethe, bob, room)
    await lethe.stop()
    creds_file = lethe.config.credentials_path.read_bytes()
    device_before = credentials(lethe.config)["device_id"]
    token = credentials(lethe.config)["access_token"]
    # (Registering the test user made a device of its own; the bot's is another.)
    devices_before = sorted(await bot_devices(synapse, token))
    assert device_before in devices_before

    sent = [await alice.send(room, f"while you were away, number {i}")
            for i in range(GAP_MESSAGES)]
    last_sent = time.monotonic()
    # The bot really is away: nothing is redacted, even once all are past due.
    assert not await bob.is_redacted(room, sent[0])
    await asyncio.sleep(max(0.0, 3.5 - (time.monotonic() - last_sent)))
    assert not await bob.is_redacted(room, sent[0])

    caplog.clear()
    # A gap wider than the bot's sync timeline (100 events) is slow to send; with a
    # timeline of 10 these 50 messages are one, as a busy room's would be.
    monkeypatch.setattr("bot.front.sync.SYNC_FILTER", {"room": {"timeline": {"limit": 10}}})
    again = BotHandle(lethe.config)
    try:
        bot = await again.start()

        async def all_redacted() -> bool:
            for event_id in sent:
                if not await bob.is_redacted(room, event_id):
                    return False
            return True

        await eventually(all_redacted, 30, interval=0.5,
                         what=f"all {GAP_MESSAGES} messages sent while stopped redacted")
        # Same device, restored login: no second password login, no new device.
        assert bot.creds is not None and bot.creds.device_id == device_before
        assert bot.client is not None and bot.client.device_id == device_before
        assert lethe.config.credentials_path.read_bytes() == creds_file
        assert sorted(await bot_devices(synapse, token)) == devices_before
        # The restart saw a limited timeline and paged back: the scenario under test.
        assert f"gap in {room}" in caplog.text, "the restart did not see a gap"
    finally:
        await again.stop()


# --- 2. nothing of a message in the database or the logs --------------------------


async def test_message_text_never_reaches_disk_or_logs(people, lethe, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    alice, bob, room = await policy_room(people, lethe)
    canary = f"canary-{secrets.token_hex(8)}"

    plain = await alice.send(room, f"the plans are in the blue folder {canary}")
    edit = await alice.edit(room, plain, f"the plans are in the red folder {canary}")
    reply = await bob.thread_reply(room, plain, f"got it {canary}")
    # A command with the canary as argument: the bot answers with an error notice.
    command = await alice.send(room, f"!lethe status {canary}")
    await alice.wait_notice(room, "unknown command")
    mine = [plain, edit, reply, command]

    async def all_gone() -> bool:
        for event_id in mine:
            if not await bob.is_redacted(room, event_id):
                return False
        return not any(canary in text for text in await bob.notices(room))

    await eventually(all_gone, 30, interval=0.5, what="canary messages and notices redacted")
    await persisted(lethe, bob, room)

    config = lethe.config
    needle = canary.encode()
    token = credentials(config)["access_token"]
    names = {p.name for p in files_under(config.data_dir)}
    assert {"lethe.db", "credentials.json"} <= names, names
    assert any(p.parent == config.store_dir for p in files_under(config.data_dir)), names
    # While running (the WAL holds the recent writes) ...
    assert files_containing(config.data_dir, needle) == []
    await lethe.stop()
    # ... and after a clean stop.
    assert files_containing(config.data_dir, needle) == []

    # Everything logged at DEBUG, third-party libraries included, is free of the text.
    assert canary not in caplog.text
    # matrix-nio logs whole responses at DEBUG (the login response carries the access
    # token); `lethe run` keeps those libraries at INFO (bot/cli/common.py setup_logging), and
    # the CLI test below checks its real output. Everything else must be free of secrets.
    shown = "\n".join(r.getMessage() for r in caplog.records if shown_by_cli(r))
    assert token not in shown
    assert config.e2ee.pickle_key not in caplog.text
    # The logs did run at DEBUG and saw the events (so the check means something).
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert any(plain in r.getMessage() or room in r.getMessage() for r in caplog.records)


# --- 3. secret files ---------------------------------------------------------------


async def test_secret_files_are_private_whatever_the_umask(people, lethe) -> None:
    old = os.umask(0o002)  # a common default that makes new files group-writable
    try:
        _, bob, room = await policy_room(people, lethe)
        await persisted(lethe, bob, room)
        config = lethe.config

        def check() -> None:
            assert mode(config.data_dir) == "0o700"
            assert mode(config.credentials_path) == "0o600"
            assert mode(config.database.path) == "0o600"
            for suffix in ("-wal", "-shm"):
                extra = config.database.path.with_name(config.database.path.name + suffix)
                if extra.exists():
                    assert mode(extra) == "0o600", extra
            assert mode(config.store_dir) == "0o700"
            store_files = files_under(config.store_dir)
            assert store_files, "the E2EE store is empty"
            bad = {str(p): mode(p) for p in store_files if mode(p) != "0o600"}
            assert bad == {}

        check()
        await lethe.stop()
        check()
    finally:
        os.umask(old)


# --- 4. the CLI --------------------------------------------------------------------


async def test_cli_run_syncs_and_stops_cleanly_on_sigterm(people, lethe, tmp_path) -> None:
    """`lethe -c CONFIG run` as a real process, logging at DEBUG (the fixture's config):
    it joins, enforces a policy, keeps message text and secrets out of its output, and
    exits 0 soon after SIGTERM."""
    alice = await people("alice")
    bob = await people("bob")
    proc = LetheProcess(["-c", str(lethe.config.path), "run"], tmp_path / "lethe-run.log")
    await proc.start()
    try:
        room = await alice.create_room([bob.user_id, lethe.user_id],
                                       power={lethe.user_id: 50})
        await bob.join(room)
        await alice.wait_notice(room, "Lethe is here", timeout=60)
        assert proc.returncode is None, proc.output()
        await alice.send(room, "!lethe after-send 3s")
        await alice.wait_notice(room, "changed the retention policy: after-send 3s")
        canary = f"canary-{secrets.token_hex(8)}"
        secret = await alice.send(room, f"meet at the old mill {canary}")
        await eventually(lambda: bob.is_redacted(room, secret), 20, what="redaction by the CLI")

        started = time.monotonic()
        code = await proc.signal(signal.SIGTERM, timeout=10)
        assert time.monotonic() - started < 10
        output = proc.output()
        assert code == 0, output
        assert "Traceback" not in output
        assert " DEBUG " in output, "the config asks for DEBUG logging"
        assert any(line.endswith("bot.cli: stopped") for line in output.splitlines()), \
            output[-2000:]
        assert canary not in output
        assert credentials(lethe.config)["access_token"] not in output
        assert lethe.config.e2ee.pickle_key not in output
        assert lethe.config.bot.password not in output
        assert files_containing(lethe.config.data_dir, canary.encode()) == []
    finally:
        await proc.close()


def test_cli_run_with_missing_config_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = subprocess.run(
        lethe_argv("-c", str(missing), "run"), capture_output=True, text=True, timeout=60,
        cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 3, result
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert str(missing) in err
    assert result.stdout == ""


def test_cli_run_with_unreachable_homeserver_exits_4(tmp_path: Path) -> None:
    port = find_free_port()  # nothing listens there
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"url": f"http://127.0.0.1:{port}"},
        "bot": {"user_id": "@lethe:localhost", "password": "correct-horse-battery"},
        "data_dir": str(tmp_path / "data"),
        "e2ee": {"pickle_key": secrets.token_hex(16)},
    }))
    started = time.monotonic()
    result = subprocess.run(
        lethe_argv("-c", str(path), "run"), capture_output=True, text=True, timeout=120,
        cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    assert result.returncode == 4, result
    err_lines = [line for line in result.stderr.splitlines() if line.startswith("lethe:")]
    assert len(err_lines) == 1, result.stderr
    assert "homeserver" in err_lines[0].lower()
    assert f"127.0.0.1:{port}" in err_lines[0]
    assert "Traceback" not in result.stderr
    # The failed login must close its HTTP session, not leave asyncio to complain.
    assert "Unclosed client session" not in result.stderr, result.stderr
    assert "correct-horse-battery" not in result.stderr
    assert took < 60, f"took {took:.0f} s to give up"
    assert not (tmp_path / "data" / "credentials.json").exists()
