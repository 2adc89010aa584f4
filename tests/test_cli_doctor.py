"""`lethe doctor` against a real Synapse: a sound installation passes (with the
warnings about what redaction cannot do), and each kind of problem is named and
sets the exit code: 1 for a failed check, 4 for the homeserver or the login."""

from __future__ import annotations

import json
import os
import shutil

import yaml

from bot.config import load_config
from bot.devtools.localsynapse import find_free_port
from tests.cli_harness import lethe_cli, logged_in, out_json
from tests.harness import bot_room

LETHE = "chat.lethe.policy"


def statuses(result) -> dict[str, list[str]]:
    """check name -> its statuses, from `doctor --json` (exit code aside)."""
    found: dict[str, list[str]] = {}
    for check in json.loads(result.stdout)["checks"]:
        found.setdefault(check["name"], []).append(check["status"])
    return found


async def test_doctor_passes_a_sound_installation(people, lethe) -> None:
    _, _, room = await bot_room(people, lethe, policy="after-send 1h")  # the bot runs
    os.chmod(lethe.config.path, 0o600)  # the pickle key is in the config file

    result = await lethe_cli(lethe.config, "doctor")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    homeserver = next(x for x in lines if x.startswith("ok    homeserver"))
    assert "Synapse 1." in homeserver and lethe.config.homeserver.url in homeserver
    assert "redaction_retention_period: 1h" in result.stdout

    report = out_json(await lethe_cli(lethe.config, "doctor", "--json"))
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("homeserver", "login", "device", "e2ee store", "file modes", "pickle key",
                 "database"):
        assert checks[name]["status"] == "ok", checks[name]
    assert lethe.user_id in checks["login"]["detail"]
    assert lethe.bot is not None and lethe.bot.creds is not None
    assert lethe.bot.creds.device_id in checks["device"]["detail"]
    rooms = [c for c in report["checks"] if c["name"] == "room"]
    assert len(rooms) == 1 and rooms[0]["status"] == "ok" and room in rooms[0]["detail"]
    assert checks["retention"]["status"] == "warn"
    assert "redaction_retention_period: 1h" in checks["retention"]["detail"]
    assert "7 days" in checks["retention"]["detail"]
    assert checks["media"]["status"] == "warn" and "media" in checks["media"]["detail"]
    # No admin token: what Lethe cannot see, and how to let it.
    assert checks["erasure"]["status"] == "warn"
    assert "LETHE_ADMIN_TOKEN" in checks["erasure"]["detail"]


async def test_doctor_names_each_problem(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, bot_power=None)
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 3600_000}) \
        == 200
    await alice.wait_notice(room, "changed the retention policy")
    await lethe.stop()
    os.chmod(lethe.config.credentials_path, 0o644)
    os.chmod(lethe.config.path, 0o644)

    result = await lethe_cli(lethe.config, "doctor", "--json")
    assert result.exit_code == 1, result.output
    found = statuses(result)
    assert found["file modes"] == ["FAIL"]
    assert found["pickle key"] == ["warn"]
    assert found["room"] == ["FAIL"]
    assert found["login"] == ["ok"] and found["homeserver"] == ["ok"]
    text = await lethe_cli(lethe.config, "doctor")
    assert f"{lethe.config.credentials_path} is 0o644, should be 0o600" in text.stdout
    assert "give it power level 50" in text.stdout

    # The bot's key store is gone: its device cannot decrypt or be trusted any more.
    os.chmod(lethe.config.credentials_path, 0o600)
    shutil.rmtree(lethe.config.store_dir)
    gone = await lethe_cli(lethe.config, "doctor", "--json")
    assert gone.exit_code == 1 and statuses(gone)["e2ee store"] == ["FAIL"]


async def test_doctor_exit_4_without_login_or_homeserver(lethe, tmp_path) -> None:
    # Never logged in: the login check fails, the local ones still run.
    result = await lethe_cli(lethe.config, "doctor", "--json")
    assert result.exit_code == 4, result.output
    found = statuses(result)
    assert found["login"] == ["FAIL"] and found["homeserver"] == ["ok"]
    assert "database" in found and "retention" in found

    await logged_in(lethe)
    # The same installation, but its homeserver does not answer.
    data = yaml.safe_load(lethe.config.path.read_text())
    data["homeserver"]["url"] = f"http://127.0.0.1:{find_free_port()}"
    moved = tmp_path / "unreachable.yaml"
    moved.write_text(yaml.safe_dump(data))
    config = load_config(moved)
    down = await lethe_cli(config, "doctor")
    assert down.exit_code == 4, down.output
    assert any(x.startswith("FAIL") and "unreachable" in x for x in down.stdout.splitlines())
    assert "Traceback" not in down.output
    # Commands that need the homeserver say so with exit 4.
    rooms = await lethe_cli(config, "rooms", "list")
    assert rooms.exit_code == 4 and "homeserver unreachable" in rooms.stderr
