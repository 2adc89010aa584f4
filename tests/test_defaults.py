"""Defaults, so that nobody has to remember (issue 15, part 1), end to end against a
real Synapse in encrypted rooms: the server's ``policy.on_join``, and a person's own
defaults for new direct chats and groups, set in a direct chat with the bot, kept in
the bot's account data (so they outlive Lethe's database), and never imposed on a
room whose state already sets a policy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bot.matrix.api import MatrixHttp
from bot.matrix.defaults import defaults_type
from tests.cli_harness import lethe_cli, one_line_error
from tests.harness import BotHandle, Person, eventually, stays, write_bot_config

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"
H = 3600 * 1000
D = 24 * H


async def _policy_state(person: Person, room: str) -> dict[str, Any] | None:
    return await person.get_state(room, LETHE)


async def _wait_policy(person: Person, room: str, expected: dict[str, Any]) -> None:
    async def written() -> bool:
        return await _policy_state(person, room) == expected

    await eventually(written, 20, what=f"the policy {expected} in the room's state")


async def _dm_with_bot(alice: Person, bot: str) -> str:
    room = await alice.create_room([bot], power={bot: 50}, is_direct=True)
    await alice.wait_notice(room, "Lethe is here")
    return room


async def _say(alice: Person, room: str, command: str, answer: str) -> str:
    before = sum(answer.lower() in t.lower() for t in await alice.notices(room))
    await alice.send(room, command)
    found: list[str] = []

    async def answered() -> bool:
        texts = [t for t in await alice.notices(room) if answer.lower() in t.lower()]
        if len(texts) > before:
            found.append(texts[0])
            return True
        return False

    await eventually(answered, 20, interval=0.3, what=f"an answer with {answer!r}")
    return found[0]


async def test_on_join_puts_the_servers_default_in_force(people, synapse, tmp_path) -> None:
    """`policy.on_join` in a new encrypted room with no policy: written into its state
    and announced as the server's default; without the power to write state the bot
    says so (in the room and in status) and writes nothing."""
    handle = BotHandle(write_bot_config(
        synapse, tmp_path / "bot",
        policy={"default_cap": "1h", "on_join": {"mode": "after_send", "timer": "2h"}}))
    try:
        await handle.start()
        alice = await people("alice")
        bob = await people("bob")
        room = await alice.create_room([bob.user_id, handle.user_id],
                                       power={handle.user_id: 50})
        await bob.join(room)
        notice = await alice.wait_notice(room, "Retention policy set to")
        assert "this server's default" in notice and "after-send 2h" in notice, notice
        await _wait_policy(alice, room, {"mode": "after_send", "timer_ms": 2 * H})
        assert await alice.get_state(room, BEEPER) == {"type": "after_send", "timer": 2 * H}

        # No power to write room settings: said, nothing written.
        bare = await alice.create_room([handle.user_id])
        note = await alice.wait_notice(bare, "Default not put in force")
        assert "need power level 50" in note, note
        status = await _say(alice, bare, "!lethe status", "Policy:")
        assert "Default not put in force" in status, status
        assert await _policy_state(alice, bare) is None
    finally:
        await handle.stop()


async def test_a_persons_defaults_for_direct_chats_and_groups(
    people, synapse, tmp_path
) -> None:
    config = write_bot_config(synapse, tmp_path / "bot")
    handle = BotHandle(config)
    try:
        await handle.start()
        bot = handle.user_id
        alice = await people("alice")
        bob = await people("bob")
        dm = await _dm_with_bot(alice, bot)
        assert await _policy_state(alice, dm) is None  # no default yet, no on_join

        saved = await _say(alice, dm, "!lethe default dm after-send 1d", "Saved")
        assert "new direct chats: after-send 1d" in saved, saved
        await _say(alice, dm, "!lethe default group after-read 1h cap 3d", "Saved")
        shown = await _say(alice, dm, "!lethe default", "Your default for new groups")
        assert "after-read 1h, cap 3d" in shown and "after-send 1d" in shown, shown

        # Refused in a group: a default is set only in a direct chat with the bot.
        group = await alice.create_room([bob.user_id, bot], power={bot: 50})
        await bob.join(group)
        await alice.wait_notice(group, "Lethe is here")
        refused = await _say(alice, group, "!lethe default dm off", "direct chat with me")
        assert "Nothing was changed" in refused, refused

        # A new direct chat gets the dm default; a new group the group default.
        dm2 = await alice.create_room([bot], power={bot: 50}, is_direct=True)
        await _wait_policy(alice, dm2, {"mode": "after_send", "timer_ms": D})
        notice = await alice.wait_notice(dm2, "Retention policy set to")
        assert f"the default {alice.user_id} set for new direct chats" in notice, notice
        group2 = await alice.create_room([bob.user_id, bot], power={bot: 50})
        await _wait_policy(alice, group2, {"mode": "after_read", "timer_ms": H,
                                           "cap_ms": 3 * D, "readers": "all"})
        # (the group default applied; the refused "dm off" changed nothing)

        # The room's state wins over the default.
        own = {"type": LETHE, "state_key": "", "content": {"mode": "after_send",
                                                            "timer_ms": 2 * H}}
        set_room = await alice.create_room([bot], power={bot: 50}, is_direct=True,
                                           state=[own])
        await alice.wait_notice(set_room, "Lethe is here")
        assert await stays(lambda: _is(alice, set_room, {"mode": "after_send",
                                                         "timer_ms": 2 * H}), 3)

        # The admin CLI reads the same account data.
        result = await lethe_cli(config, "defaults", "show", alice.user_id)
        assert result.exit_code == 0, result.output
        assert "after-send 1d" in result.stdout and "after-read 1h" in result.stdout
        as_json = await lethe_cli(config, "defaults", "show", alice.user_id, "--json")
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.stdout)["dm"] == {"mode": "after_send", "timer_ms": D}
        bad = await lethe_cli(config, "defaults", "show", "alice")
        assert bad.exit_code == 2 and "not a user id" in one_line_error(bad)
        nobody = await lethe_cli(config, "defaults", "show", f"@nobody:{synapse.server_name}")
        assert nobody.exit_code == 2 and "unknown user" in one_line_error(nobody)

        # Cleared: a new direct chat starts without a policy.
        cleared = await _say(alice, dm, "!lethe default clear dm", "Saved")
        assert "new direct chats: none" in cleared, cleared
        dm3 = await _dm_with_bot(alice, bot)
        assert await stays(lambda: _is(alice, dm3, None), 3)
    finally:
        await handle.stop()

    # Lethe's database lost (a new data_dir, the same account): the defaults remain.
    fresh = dataclasses.replace(config, data_dir=tmp_path / "fresh")
    handle = BotHandle(fresh)
    try:
        await handle.start()
        group3 = await alice.create_room([bob.user_id, bot], power={bot: 50})
        await _wait_policy(alice, group3, {"mode": "after_read", "timer_ms": H,
                                           "cap_ms": 3 * D, "readers": "all"})
    finally:
        await handle.stop()


async def _is(person: Person, room: str, expected: dict[str, Any] | None) -> bool:
    return await _policy_state(person, room) == expected


async def test_malformed_stored_defaults_lose_only_their_bad_part(
    people, synapse, tmp_path: Path
) -> None:
    """Account data someone broke: the readable part still counts, the rest is named
    to its owner; an invalid default in a command is refused with the reason."""
    config = write_bot_config(synapse, tmp_path / "bot")
    handle = BotHandle(config)
    try:
        bot_ = await handle.start()
        assert bot_.http is not None
        alice = await people("alice")
        http: MatrixHttp = bot_.http
        reply = await http.put_account_data(handle.user_id, defaults_type(alice.user_id), {
            "dm": {"mode": "sometimes"}, "group": {"mode": "after_send", "timer_ms": H}})
        assert reply.ok, reply
        dm = await _dm_with_bot(alice, handle.user_id)
        shown = await _say(alice, dm, "!lethe default", "Your default for new groups")
        assert "dm default is unreadable" in shown and "after-send 1h" in shown, shown
        await _say(alice, dm, "!lethe default dm after-read 2h cap 1h",
                   "the cap must be at least as long as the timer")
        await _say(alice, dm, "!lethe default bogus", "usage")
        group = await alice.create_room([handle.user_id], power={handle.user_id: 50})
        await _wait_policy(alice, group, {"mode": "after_send", "timer_ms": H})
        saved = await _say(alice, dm, "!lethe default dm after-send 5m", "Saved")
        assert "Dropped: the stored dm default is unreadable" in saved, saved
        stored = await http.get_account_data(handle.user_id, defaults_type(alice.user_id))
        assert stored.body == {"dm": {"mode": "after_send", "timer_ms": 300_000},
                               "group": {"mode": "after_send", "timer_ms": H}}
    finally:
        await handle.stop()
