"""The bridge deletes the files of the messages it expires, with a homeserver admin's
token, where it can see them: pushed events are in clear, so in rooms without
encryption; in an encrypted room it holds no keys, and the files stay (the bot, a
member, deletes those). Runs on the bridge module's own Synapse (tests/test_bridge.py:
its registration must be loaded at start)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from bot.cli.main import main
from bot.engine.model import MediaCounts
from bridge.config import load_bridge_config
from tests.harness import all_redacted, eventually, stays, unique
from tests.test_bridge import BridgeHandle, BridgeServer, bridge_server, synapse  # noqa: F401
from tests.test_media import all_gone, all_there, send_file, send_image, token_file


async def test_the_bridge_deletes_the_files_of_messages_it_expired(
        bridge_server: BridgeServer, people, tmp_path: Path) -> None:  # noqa: F811
    token = bridge_server.hs.register(unique("admin"), admin=True).access_token
    config = bridge_server.config(tmp_path / "bridge",
                                  default_policy={"mode": "after_send", "timer": "3s"})
    data = yaml.safe_load(config.path.read_text())
    data["erasure"] = {"admin_token_file": str(token_file(tmp_path / "secrets", token))}
    config.path.write_text(yaml.safe_dump(data))
    handle = BridgeHandle(load_bridge_config(config.path))
    bridge = await handle.start()
    try:
        alice = await people("alice")
        bob = await people("bob")
        plain = await alice.create_room([bob.user_id], encrypted=False)
        await bob.join(plain)
        image, files = await send_image(alice, plain, "bridged.png")
        attachment, encrypted_files = await send_file(bob, plain, "bridged.pdf")
        await handle.tracked(image, attachment)
        await eventually(all_redacted(bob, plain, image, attachment), 20, what="redactions")
        await eventually(all_gone(bob, files + encrypted_files), 20,
                         what="the files answering 404")
        engine = bridge.engine
        assert engine is not None

        async def settled() -> bool:  # the 404 comes a moment before the row is settled
            return await engine.media_counts(plain) == MediaCounts(deleted=3)
        await eventually(settled, 10, what="the files counted as deleted")

        secret = await alice.create_room([bob.user_id])
        await bob.join(secret)
        hidden, hidden_files = await send_image(alice, secret, "unseen.png")
        await eventually(all_redacted(bob, secret, hidden), 20, what="the redaction")
        assert await stays(all_there(bob, hidden_files), 2), \
            "the bridge cannot read encrypted messages, so it never knows their files"
        assert await engine.media_counts(secret) == MediaCounts()

        listed = await _bridge_rooms(handle.config.path, "--json")
        media = {r["room_id"]: r["media"] for r in json.loads(listed)}
        assert media[plain] == {"deletion": True, "held": 0, "due": 0, "deleted": 3,
                                "remote": 0}
        text = await _bridge_rooms(handle.config.path)
        assert "Files, all rooms: 3 deleted, 0 waiting to be deleted" in text
    finally:
        await handle.stop()


async def _bridge_rooms(config: Path, *args: str) -> str:
    """`lethe bridge rooms`, run as a command (in a thread: it runs its own loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["-c", str(config), "bridge", "rooms", *args])
    assert result.exit_code == 0, result.output
    return result.output
