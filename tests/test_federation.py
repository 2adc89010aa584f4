"""Two Synapses federating on loopback (the ``federation`` fixture), one of them with a
wrong clock: no remote clock decides a deadline alone (see sendtimes.MAX_SKEW_MS)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from nio import JoinResponse

from bot.devtools.localfederation import LocalFederation
from tests.harness import (
    BotHandle,
    Person,
    eventually,
    not_redacted,
    stays,
    unique,
    write_bot_config,
)

TIMER_S = 5


async def _person(hs, name: str, tmp_path: Path) -> Person:
    person = Person(hs, unique(name), tmp_path / "people" / name)
    await person.start()
    return person


async def _join(person: Person, room_id: str) -> None:
    """A join through another server can fail until that server has stored the invite."""
    async def joined() -> bool:
        return isinstance(await person.client.join(room_id), JoinResponse)
    await eventually(joined, 30, interval=0.5, what=f"{person.user_id} joined over federation")
    await eventually(lambda: room_id in person.client.rooms, 30, what="join in own sync")


async def _arrived(person: Person, room: str, event_id: str) -> None:
    async def has_it() -> bool:
        status, _ = await person.api("GET", f"/rooms/{room}/event/{event_id}")
        return status == 200
    await eventually(has_it, 30, what=f"{event_id} on {person.user_id}'s server")


async def test_two_servers_federate_on_loopback(
    federation: LocalFederation, tmp_path: Path
) -> None:
    alice = await _person(federation[0], "alice", tmp_path)
    bob = await _person(federation[1], "bob", tmp_path)
    try:
        assert alice.user_id.endswith(":" + federation[0].server_name)
        assert bob.user_id.endswith(":" + federation[1].server_name)
        room = await alice.create_room([bob.user_id], encrypted=False)
        await _join(bob, room)
        event_id = await alice.send(room, "hello over loopback federation")

        async def bob_sees_it() -> bool:
            status, data = await bob.api("GET", f"/rooms/{room}/event/{event_id}")
            return status == 200 and data.get("content", {}).get("body", "").startswith("hello")
        await eventually(bob_sees_it, 30, what="bob's server has alice's message")
    finally:
        await alice.close()
        await bob.close()


async def _bot_room(
    federation: LocalFederation, tmp_path: Path, policy: str
) -> tuple[BotHandle, Person, Person, str]:
    """alice (server 1) makes a room with bob (server 2) and a bot on server 1, and sets
    ``policy``. bob joins after the bot, so his join is in the bot's timeline (the bot
    syncs with lazy-loaded members)."""
    lethe = BotHandle(write_bot_config(federation[0], tmp_path / "bot"))
    alice = await _person(federation[0], "alice", tmp_path)
    bob = await _person(federation[1], "bob", tmp_path)
    room = await alice.create_room(
        [bob.user_id, lethe.user_id], encrypted=False, power={lethe.user_id: 50})
    await lethe.start()
    await alice.wait_notice(room, "Lethe is here", timeout=60)
    await _join(bob, room)
    await alice.send(room, f"!lethe {policy}")
    await alice.wait_notice(room, f"changed the retention policy: {policy}", timeout=30)
    return lethe, alice, bob, room


async def test_a_remote_server_an_hour_fast_does_not_delay_after_send(
    federation: LocalFederation, tmp_path: Path
) -> None:
    lethe, alice, bob, room = await _bot_room(federation, tmp_path, f"after-send {TIMER_S}s")
    try:
        with federation[1].clock_offset(3600 * 1000):
            before = time.time()
            event_id = await bob.send(room, "stamped an hour ahead")
            stamped = (await bob.event(room, event_id))["origin_server_ts"]
        assert stamped > (before + 3000) * 1000, "server 2's clock is an hour fast"
        await _arrived(alice, room, event_id)
        # Due TIMER_S after Lethe saw it; allow a few seconds of sync and federation.
        assert await stays(not_redacted(alice, room, event_id), TIMER_S - 1)
        await eventually(lambda: alice.is_redacted(room, event_id), TIMER_S + 10,
                         what="the message from the fast server redacted on time")
        assert time.time() - before < 2 * TIMER_S + 10
    finally:
        await lethe.stop()
        await alice.close()
        await bob.close()


async def test_a_receipt_from_a_server_60_s_slow_counts_when_it_arrives(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """bob's server stamps his receipt a minute early: the message still waits the
    whole timer after the receipt really arrived (it went at once before)."""
    lethe, alice, bob, room = await _bot_room(federation, tmp_path, f"after-read {TIMER_S}s")
    try:
        event_id = await alice.send(room, "read by a slow server")
        await _arrived(bob, room, event_id)
        # bob is a required reader: unread, it stays past the timer.
        assert await stays(not_redacted(alice, room, event_id), TIMER_S + 1)
        with federation[1].clock_offset(-60 * 1000):
            sent_receipt = time.time()
            await bob.receipt(room, event_id)
            # Not before TIMER_S after the receipt was sent (it arrived later still).
            left = sent_receipt + TIMER_S - 0.3 - time.time()
            assert await stays(not_redacted(alice, room, event_id), left), (
                "redacted before its timer ran after the receipt arrived")
        await eventually(lambda: alice.is_redacted(room, event_id), 20,
                         what="the message redacted after the slow server's receipt")
    finally:
        await lethe.stop()
        await alice.close()
        await bob.close()


async def test_a_join_is_retried_while_the_inviting_server_is_down(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """carol (server 2) invites the bot (server 1), then her server goes down before the
    bot joins: the bot keeps trying with backoff, lists the invite meanwhile, and joins
    once her server is back."""
    from tests.cli_harness import lethe_cli

    lethe = BotHandle(write_bot_config(federation[0], tmp_path / "bot",
                                       invites={"allow": ["@*:*"]}))
    carol = await _person(federation[1], "carol", tmp_path)
    try:
        room = await carol.create_room([lethe.user_id], encrypted=False)
        federation[1].stop()
        try:
            await lethe.start()

            async def listed() -> bool:
                result = await lethe_cli(lethe.config, "rooms", "list", "--json")
                return any(r.get("membership") == "invite" and r["room_id"] == room
                           and r["attempts"] >= 2 for r in json.loads(result.stdout))

            await eventually(listed, 60, interval=1, what="the failing join, retried")
        finally:
            federation[1].start()

        async def bot_joined() -> bool:
            status, data = await carol.api("GET", f"/rooms/{room}/joined_members")
            return status == 200 and lethe.user_id in data.get("joined", {})

        await eventually(bot_joined, 120, interval=1, what="the bot joined once server 2 is back")
    finally:
        await lethe.stop()
        await carol.close()


async def test_a_remote_member_who_joined_before_the_bot_must_read_first(
    federation: LocalFederation, tmp_path: Path
) -> None:
    """bob (server 2) is in the room before the bot joins: he is a required reader all
    the same, so an after_read message waits for his receipt."""
    lethe = BotHandle(write_bot_config(federation[0], tmp_path / "bot"))
    alice = await _person(federation[0], "alice", tmp_path)
    bob = await _person(federation[1], "bob", tmp_path)
    try:
        room = await alice.create_room([bob.user_id], encrypted=False)
        await _join(bob, room)
        await alice.set_power(room, lethe.user_id, 50)
        await alice.invite(room, lethe.user_id)
        await lethe.start()
        await alice.wait_notice(room, "Lethe is here", timeout=60)
        await alice.send(room, "!lethe after-read 2s cap 1h")
        await alice.wait_notice(room, "changed the retention policy: after-read 2s", timeout=30)
        message = await alice.send(room, "canary-federation bob has not read this")
        await _arrived(bob, room, message)
        assert await stays(not_redacted(alice, room, message), 6), \
            "redacted before bob, who joined before the bot, read it"
        await bob.receipt(room, message)
        await eventually(lambda: alice.is_redacted(room, message), 30,
                         what="redacted after bob's receipt")
    finally:
        await lethe.stop()
        await alice.close()
        await bob.close()
