"""The operator's bounds on the bridge (the same policy.bounds as the bot), against a
real Synapse that has loaded the bridge's registration: a state event past max_timer
enforced at the bound in an encrypted room, and `lethe bridge rooms` showing both."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from bot.cli.main import main
from bridge.config import load_bridge_config
from tests.harness import all_redacted, eventually
from tests.test_bridge import (  # noqa: F401  (fixtures)
    BridgeHandle,
    BridgeServer,
    bridge_server,
    encrypted_room,
    synapse,
)

BEEPER = "com.beeper.disappearing_timer"
HOUR_MS = 3_600_000


async def test_bridge_enforces_a_too_long_state_event_at_the_bound(
    bridge_server: BridgeServer, people, tmp_path: Path  # noqa: F811
) -> None:
    written = bridge_server.config(tmp_path / "bridge",
                                   default_policy={"mode": "after_send", "timer": "1d"})
    data = yaml.safe_load(written.path.read_text())
    data["policy"]["bounds"] = {"max_timer": "3s", "min_timer": "1s"}
    data["bridge"]["default_policy"]["timer"] = "2s"  # inside the bounds (else refused)
    written.path.write_text(yaml.safe_dump(data))
    handle = BridgeHandle(load_bridge_config(written.path))
    await handle.start()
    try:
        alice, (bob,), room = await encrypted_room(people, "bob")
        assert await alice.put_state(room, BEEPER, {"type": "after_send",
                                                    "timer": HOUR_MS}) == 200
        message = await bob.send(room, "canary-bridge-bounds gone at the bound")
        await handle.tracked(message)
        await eventually(all_redacted(alice, room, message), 20,
                         what="redaction at max_timer, not at the state's 1h")
        assert handle.bridge is not None and handle.bridge.engine is not None
        row = await handle.bridge.engine.room(room)
        assert row is not None and row.policy.timer_ms == 3000

        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["-c", str(written.path), "bridge", "rooms", "--json"],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        [found] = [r for r in json.loads(result.stdout) if r["room_id"] == room]
        assert found["bounds"]["set"]["timer_ms"] == HOUR_MS
        assert found["bounds"]["enforced"]["timer_ms"] == 3000
        assert "max_timer 3s" in found["bounds"]["bound"]
        table = await asyncio.to_thread(
            CliRunner().invoke, main, ["-c", str(written.path), "bridge", "rooms"],
            catch_exceptions=False)
        assert "set after-send 1h, enforced after-send 3s" in table.stdout, table.output
        status = await asyncio.to_thread(
            CliRunner().invoke, main, ["-c", str(written.path), "bridge", "status", "--json"],
            catch_exceptions=False)
        bounds = json.loads(status.stdout)["bounds"]
        assert bounds["rooms_at_bound"] == [room]
        assert bounds["bounds"] == "min_timer 1s, max_timer 3s"
    finally:
        await handle.stop()
