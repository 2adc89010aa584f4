"""The operator's bounds (policy.bounds, policy.rooms) against a real Synapse, in
encrypted rooms: commands and `lethe policy set` outside them refused naming the
bound; a policy that state sets anyway enforced at the nearest bound (redacted at the
bound, not at the state's timer) and shown as set and enforced; a room where off is
the only allowed policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.config import load_config
from tests.cli_harness import lethe_cli, one_line_error, out_json, text_fields
from tests.harness import BotHandle, bot_room, eventually, stays, write_bot_config

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"
HOUR_MS = 3_600_000


def _bounded(synapse: Any, directory: Path, **policy: Any) -> BotHandle:
    return BotHandle(write_bot_config(synapse, directory,
                                      policy={"default_cap": "1h", **policy}))


async def test_commands_outside_the_bounds_are_refused_naming_the_bound(
    synapse, people, tmp_path: Path
) -> None:
    lethe = _bounded(synapse, tmp_path / "bot", bounds={"min_timer": "2s", "max_timer": "3s"})
    try:
        alice, _, room = await bot_room(people, lethe, "bob")
        await alice.send(room, "!lethe after-send 1h")
        refused = await alice.wait_notice(room, "not allowed on this server")
        assert "the timer 1h is longer than the bound max_timer 3s (policy.bounds)" in refused
        assert "Nothing was changed" in refused, refused
        await alice.send(room, "!lethe after-read 1s")
        await alice.wait_notice(room, "the timer 1s is shorter than the bound min_timer 2s")
        assert await alice.get_state(room, LETHE) is None  # nothing was written
        await alice.send(room, "!lethe after-send 3s")
        await alice.wait_notice(room, "changed the retention policy: after-send 3s")

        result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "1d")
        assert result.exit_code == 1, result.output
        assert "the timer 1d is longer than the bound max_timer 3s" in one_line_error(result)
        assert await alice.get_state(room, LETHE) == {"mode": "after_send", "timer_ms": 3000}
    finally:
        await lethe.stop()


async def test_state_with_a_too_long_timer_is_enforced_at_max_timer(
    synapse, people, tmp_path: Path
) -> None:
    lethe = _bounded(synapse, tmp_path / "bot", bounds={"max_timer": "3s"})
    try:
        alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s")
        # A member's client sets a newer Beeper event past the bound: the mix of the two
        # events says 1h, the bot enforces 3s, says so, and keeps running.
        assert await alice.put_state(room, BEEPER, {"type": "after_send",
                                                    "timer": HOUR_MS}) == 200
        notice = await alice.wait_notice(room, "outside the bounds")
        assert "the timer 1h is longer than the bound max_timer 3s" in notice, notice
        assert "Enforced instead: after-send 3s" in notice, notice
        doomed = await alice.send(room, "canary-bounds gone at the bound, not in an hour")
        await eventually(lambda: bob.is_redacted(room, doomed), 20,
                         what="redaction at max_timer, not at the state's 1h")

        await alice.send(room, "!lethe status")
        status = await alice.wait_notice(room, "Policy: set:")
        assert ("Policy: set: after-send 1h, enforced: after-send 3s (bound: the timer 1h "
                "is longer than the bound max_timer 3s (policy.bounds))") in status, status

        rows = out_json(await lethe_cli(lethe.config, "rooms", "list", "--json"))
        [row] = [r for r in rows if r["room_id"] == room]
        assert row["bounds"]["set"]["timer_ms"] == HOUR_MS
        assert row["bounds"]["enforced"]["timer_ms"] == 3000
        assert "max_timer 3s" in row["bounds"]["bound"]
        listed = await lethe_cli(lethe.config, "rooms", "list")
        assert "set after-send 1h, enforced after-send 3s" in listed.stdout, listed.output
        shown = await lethe_cli(lethe.config, "rooms", "show", room)
        fields = text_fields(shown.stdout)
        assert fields["Policy"].startswith("set: after-send 1h, enforced: after-send 3s")
        assert fields["Bounds"] == "max_timer 3s"
        assert "Lethe applies" not in shown.stdout  # the bot enforces what the bounds say
    finally:
        await lethe.stop()


async def test_a_room_where_only_off_is_allowed(synapse, people, tmp_path: Path) -> None:
    config = write_bot_config(synapse, tmp_path / "bot", policy={"default_cap": "1h"})
    alice = await people("alice")
    room = await alice.create_room([config.bot.user_id], power={config.bot.user_id: 50})
    # The compliance rule names this room by its id.
    data = yaml.safe_load(config.path.read_text())
    data["policy"]["rooms"] = {room: {"only_off": True}}
    config.path.write_text(yaml.safe_dump(data))
    lethe = BotHandle(load_config(config.path))
    try:
        await lethe.start()
        await alice.wait_notice(room, "Lethe is here")
        await alice.send(room, "!lethe after-send 1m")
        refused = await alice.wait_notice(room, "not allowed on this server")
        assert f'only off is allowed in this room (only_off, policy.rooms["{room}"])' \
            in refused, refused
        result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "1m")
        assert result.exit_code == 1 and "only off is allowed" in one_line_error(result)

        # Set by state anyway (alice may): enforced as off, and said.
        assert await alice.put_state(room, LETHE, {"mode": "after_send",
                                                   "timer_ms": 2000}) == 200
        notice = await alice.wait_notice(room, "outside the bounds")
        assert "Enforced instead: off" in notice, notice
        kept = await alice.send(room, "canary-only-off kept")

        async def intact() -> bool:
            return not await alice.is_redacted(room, kept)

        assert await stays(intact, 4), "redacted in a room where only off is allowed"
        await alice.send(room, "!lethe status")
        status = await alice.wait_notice(room, "Policy: set:")
        assert "set: after-send 2s, enforced: off (bound: only off" in status, status
        shown = out_json(await lethe_cli(lethe.config, "policy", "show", room, "--json"))
        assert shown["bounds"]["set"]["mode"] == "after_send"
        assert shown["bounds"]["enforced"]["mode"] == "off"
        assert shown["bounds"]["bounds"] == "only off"
        assert shown["lethe_policy"]["mode"] == "off"  # what the bot stored: enforced
    finally:
        await lethe.stop()


async def test_bounds_changed_between_restarts_apply_to_new_messages_only(
    synapse, people, tmp_path: Path
) -> None:
    lethe = _bounded(synapse, tmp_path / "bot")  # no bounds yet
    try:
        alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 1h")
        before = await alice.send(room, "canary-before-bounds kept for its hour")
        await lethe.synced_after()
        await lethe.stop()

        data = yaml.safe_load(lethe.config.path.read_text())
        data["policy"]["bounds"] = {"max_timer": "3s"}
        lethe.config.path.write_text(yaml.safe_dump(data))
        lethe = BotHandle(load_config(lethe.config.path))
        await lethe.start()
        after = await alice.send(room, "canary-after-bounds gone at the new bound")
        await eventually(lambda: bob.is_redacted(room, after), 20,
                         what="a new message redacted at the bound set while stopped")

        async def intact() -> bool:
            return not await bob.is_redacted(room, before)

        assert await intact(), "a message tracked before the bounds lost its deadline"
        await alice.send(room, "!lethe status")
        status = await alice.wait_notice(room, "Policy: set:")
        assert "set: after-send 1h, enforced: after-send 3s" in status, status
    finally:
        await lethe.stop()
