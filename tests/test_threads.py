"""Thread replies are messages of their own, end to end against a real Synapse.

alice creates the encrypted room and gives the bot power 50; bob is the one required
reader in after-read rooms. A thread reply keeps its own deadline whatever happens to
its root: Lethe expiring the root, or alice deleting it herself.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from tests.harness import BotHandle, bot_room, eventually, not_redacted, stays


async def _tracked(lethe: BotHandle, *events: str) -> None:
    """Wait until the bot tracks these events, so what follows does not race its sync."""
    assert lethe.bot is not None
    engine = lethe.bot.engine

    async def known() -> bool:
        return await engine.tracked(events) == set(events)

    await eventually(known, 15, what="bot tracking the new events")


async def test_thread_reply_outlives_its_root_read_in_the_main_timeline(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    await alice.send(room, "!lethe after-read 3s cap 1h")
    await alice.wait_notice(room, "changed the retention policy: after-read 3s, cap 1h")
    root = await alice.send(room, "canary-thread root, read in the main timeline")
    reply = await alice.thread_reply(room, root, "canary-thread reply nobody has read")
    await _tracked(lethe, root, reply)

    # What Element sends for a thread root read in the main timeline.
    await bob.receipt(room, root, thread_id="main")
    await eventually(lambda: bob.is_redacted(room, root), 15,
                     what="the root redacted 3 s after bob read it")
    assert await stays(not_redacted(bob, room, reply), 5), \
        "the unread thread reply was redacted with its root"

    # Read in its thread, the reply goes at its own deadline: 3 s after that receipt.
    read_ms = int(time.time() * 1000)
    await bob.receipt(room, reply, thread_id=root)
    await eventually(lambda: bob.is_redacted(room, reply), 15,
                     what="the reply redacted 3 s after bob read it in its thread")
    because = (await bob.event(room, reply))["unsigned"]["redacted_because"]
    assert because["sender"] == lethe.user_id
    assert because["origin_server_ts"] - read_ms >= 3000 - 250, \
        "the reply was redacted before its own due time"


async def test_thread_root_deleted_by_its_sender_takes_no_reply_along(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 8s")
    root = await alice.send(room, "canary-thread root alice will delete")
    reply = await bob.thread_reply(room, root, "canary-thread bob's reply, due on its own")
    await _tracked(lethe, root, reply)
    sent_ms = (await bob.event(room, reply))["origin_server_ts"]

    status, data = await alice.api(
        "PUT", f"/rooms/{quote(room)}/redact/{quote(root)}/delete-{int(time.time() * 1000)}", {})
    assert status == 200, data
    await eventually(lambda: bob.is_redacted(room, root), 15, what="alice's own redaction")
    # Long enough for the bot to see alice's redaction, short of the reply's 8 s.
    window = 8 - (time.time() - sent_ms / 1000) - 1.5
    assert window >= 3, "the setup took too long to show anything"
    assert await stays(not_redacted(bob, room, reply), window), \
        "Lethe redacted bob's reply because alice deleted her root"

    await eventually(lambda: bob.is_redacted(room, reply), 15,
                     what="the reply redacted at its own deadline")
    because = (await bob.event(room, reply))["unsigned"]["redacted_because"]
    assert because["sender"] == lethe.user_id
    assert because["origin_server_ts"] - sent_ms >= 8000 - 250
