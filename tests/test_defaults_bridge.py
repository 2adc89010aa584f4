"""A person's own defaults through the bridge (issue 15, part 1), against a real
Synapse that loaded the bridge's registration: set in a direct chat with the bridge's
bot (unencrypted, answered with m.notice), then written by the bridge, as the user,
into the rooms that user creates, with no bot invited at all; direct chats and groups
each by their own default; never where the room's state has a policy, outside
``bridge.rooms``, or where a Lethe bot (``bridge.defer_to``) is invited."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner
from nio import RoomCreateResponse

from bot.cli.main import main
from tests.harness import Person, eventually, stays, unique
from tests.test_bridge import (  # noqa: F401  (fixtures)
    BridgeServer,
    bridge_server,
    bridges,
    synapse,
)
from tests.test_defaults import LETHE, _say

H = 3600 * 1000
D = 24 * H


async def _policy_of(person: Person, room: str) -> tuple[dict[str, Any] | None, str | None]:
    status, data = await person.api("GET", f"/rooms/{quote(room)}/state")
    if status != 200:
        return None, None
    for event in data if isinstance(data, list) else []:
        if event.get("type") == LETHE and event.get("state_key") == "":
            return event.get("content"), event.get("sender")
    return None, None


async def test_bridge_applies_a_users_defaults_to_rooms_they_create(
    bridge_server: BridgeServer, bridges, people,  # noqa: F811  (imported fixtures)
) -> None:
    lethe_bot = bridge_server.hs.register(unique("lethebot")).user_id
    handle = await bridges(rooms={"exclude": ["#secret*"]}, defer_to=[lethe_bot])
    bridge_bot = bridge_server.bridge_user
    alice = await people("alice")
    bob = await people("bob")

    # Set in a direct chat with the bridge's bot (it joins on the invite of a local user).
    dm = await alice.create_room([bridge_bot], encrypted=False, is_direct=True)
    await eventually(lambda: _joined(alice, dm, bridge_bot), 20, what="the bridge's bot joined")
    saved = await _say(alice, dm, "!lethe default dm after-send 1d", "Saved")
    assert "new direct chats: after-send 1d" in saved, saved
    await _say(alice, dm, "!lethe default group after-send 2h", "Saved")
    notices = await alice.api("GET", f"/rooms/{quote(dm)}/messages", params={"dir": "b"})
    answers = [e for e in notices[1]["chunk"] if e.get("sender") == bridge_bot
               and e.get("type") == "m.room.message"]
    assert answers and all(e["content"]["msgtype"] == "m.notice" for e in answers)
    help_text = await _say(alice, dm, "!lethe help", "apply your own default")
    assert "default clear" in help_text
    await _say(alice, dm, "!lethe after-send 1h", "only your defaults")

    # A new encrypted direct chat with bob, no bot invited: the dm default, as alice.
    chat = await alice.create_room([bob.user_id], is_direct=True)
    await eventually(lambda: _has(alice, chat, {"mode": "after_send", "timer_ms": D}), 20,
                     what="the dm default in the new direct chat")
    assert (await _policy_of(alice, chat))[1] == alice.user_id
    # A new group: the group default.
    group = await alice.create_room([bob.user_id])
    await eventually(lambda: _has(alice, group, {"mode": "after_send", "timer_ms": 2 * H}),
                     20, what="the group default in the new group")

    # Left alone: a room whose state sets a policy, one outside bridge.rooms, one where
    # a Lethe bot is invited. Refused: a default set in a group.
    own = {"mode": "after_send", "timer_ms": 5 * H}
    stated = await alice.create_room([bob.user_id], state=[
        {"type": LETHE, "state_key": "", "content": own}])
    resp = await alice.client.room_create(alias=unique("secret"), invite=[bob.user_id])
    assert isinstance(resp, RoomCreateResponse), resp
    secret = str(resp.room_id)
    deferred = await alice.create_room([bob.user_id, lethe_bot])
    status, upgrade = await alice.api("POST", f"/rooms/{quote(stated)}/upgrade",
                                      {"new_version": "12"})
    assert status == 200, upgrade
    upgraded = upgrade["replacement_room"]  # continues a room: not a new chat
    # (unencrypted: the bridge holds no keys, so it reads no command in encrypted rooms)
    plain = await alice.create_room([bob.user_id, bridge_bot], encrypted=False)
    await bob.join(plain)
    await eventually(lambda: _joined(alice, plain, bridge_bot), 20,
                     what="the bridge's bot joined the group")
    await _say(alice, plain, "!lethe default group off", "direct chat with me")
    # Other commands in a group are another bot's: the bridge's bot stays silent.
    await alice.send(plain, "!lethe after-send 1h")
    assert await stays(lambda: _answers(alice, plain, bridge_bot, 1), 3)
    assert await stays(lambda: _has(alice, stated, own), 3)
    assert await stays(lambda: _has(alice, upgraded, None), 1)
    assert (await _policy_of(alice, secret))[0] is None
    assert (await _policy_of(alice, deferred))[0] is None
    shown = await _say(alice, dm, "!lethe default", "Your default for new groups")
    assert "new groups: after-send 2h" in shown, shown  # the refused "off" changed nothing

    # The operator reads them with the registration's token.
    shown_cli = await lethe_cli_bridge(handle.config, "defaults", alice.user_id)
    assert shown_cli.exit_code == 0, shown_cli.output
    assert "after-send 1d" in shown_cli.stdout and "after-send 2h" in shown_cli.stdout
    nobody = await lethe_cli_bridge(handle.config, "defaults",
                                    f"@nobody:{bridge_server.hs.server_name}")
    assert nobody.exit_code == 2 and "unknown user" in nobody.output

    # Cleared: the next direct chat starts without a policy.
    await _say(alice, dm, "!lethe default clear", "Saved")
    later = await alice.create_room([bob.user_id], is_direct=True)
    assert await stays(lambda: _has(alice, later, None), 4)


async def lethe_cli_bridge(config: Any, *args: str) -> Any:
    """``lethe -c CONFIG bridge ARGS...`` in a worker thread (the bridge keeps running)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, ["-c", str(config.path), "bridge",
                                                         *args], catch_exceptions=False)


async def _answers(person: Person, room: str, bot: str, count: int) -> bool:
    status, data = await person.api("GET", f"/rooms/{quote(room)}/messages",
                                    params={"dir": "b"})
    return status == 200 and count == sum(
        e.get("sender") == bot and e.get("type") == "m.room.message" for e in data["chunk"])


async def _has(person: Person, room: str, expected: dict[str, Any] | None) -> bool:
    return (await _policy_of(person, room))[0] == expected


async def _joined(person: Person, room: str, user: str) -> bool:
    status, data = await person.api("GET", f"/rooms/{quote(room)}/joined_members")
    return status == 200 and user in data.get("joined", {})
