"""`lethe db migrate` with the real bot: messages pending on SQLite, the bot stopped,
the database moved to PostgreSQL, the bot restarted on it: the pending messages are
redacted on time, from what was copied. And `lethe run` refusing a PostgreSQL database
at start names the problem, never the password."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml

from bot.config import Config, load_config
from bot.devtools.localpostgres import LocalPostgres
from bot.engine.store import open_store
from tests.conftest import pg_database
from tests.harness import BotHandle, bot_room, clean_env, eventually, lethe_argv, not_redacted
from tests.test_faults import all_redacted
from tests.test_restart_privacy import persisted
from tests.unit.test_db_migrate import bad_urls

TIMER_S = 20
SLACK_S = 10  # the bot's sync and redaction after a deadline, on a busy machine


def _with_database(config: Config, url: str, name: str) -> Config:
    data = yaml.safe_load(config.path.read_text())
    data["database"] = url
    path = config.path.with_name(name)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def _lethe(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *lethe_argv(*args), env=clean_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_pending_messages_are_redacted_on_time_after_the_move(
        people, lethe: BotHandle, postgres: LocalPostgres, tmp_path: Path) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob",
                                         policy=f"after-send {TIMER_S}s")
    sent_at = time.monotonic()
    sent = [await alice.send(room, f"secret {i}") for i in range(5)]
    await persisted(lethe, bob, room)
    await lethe.stop()
    target = pg_database(postgres)
    assert target.password

    code, out = await _lethe("-c", str(lethe.config.path), "db", "migrate", "--to",
                             target.url)
    assert code == 0, out
    assert target.password not in out
    moved = await open_store(target, readonly=True)
    try:
        assert {p.event_id for p in await moved.pending()} >= set(sent)
    finally:
        await moved.close()

    # `lethe run` refused at start (the run logs at DEBUG): exit 3, the problem named,
    # the password nowhere.
    for url, password, problem in bad_urls(postgres, "Zq7-unmistakable-pw"):
        bad = _with_database(lethe.config, url, "bad.yaml")
        code, out = await _lethe("-c", str(bad.path), "run")
        assert code == 3 and problem in out, out
        assert password not in out and target.password not in out

    assert await not_redacted(bob, room, *sent)()
    again = BotHandle(_with_database(lethe.config, target.url, "pg.yaml"))
    await again.start()
    try:
        left = TIMER_S + SLACK_S - (time.monotonic() - sent_at)
        assert left > SLACK_S, "the move took past the deadline: the test proves nothing"
        await eventually(lambda: all_redacted(bob, room, sent), left,
                         what="the moved messages redacted by their deadline")
    finally:
        await again.stop()
