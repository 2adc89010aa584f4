"""after-send in an encrypted room, end to end against a real Synapse."""

from __future__ import annotations

from tests.harness import all_redacted, bot_room, eventually


async def test_after_send_redacts_in_encrypted_room(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")

    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")
    assert (await alice.get_state(room, "com.beeper.disappearing_timer")) == {
        "type": "after_send", "timer": 3000}

    secret = await alice.send(room, "canary-after-send the plans are in the blue folder")
    event = await bob.event(room, secret)
    assert event["type"] == "m.room.encrypted" and event["content"]
    await eventually(lambda: bob.is_redacted(room, secret), 15, what="redaction seen by bob")


async def test_redactions_are_confirmed_by_their_echo_not_by_fetching(people, lethe) -> None:
    """The redaction coming back through the bot's sync confirms it: only the first
    one in the room is fetched as a spot check, and the messages really are gone."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s")
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine
    sent = [await alice.send(room, f"canary-echo message {i}") for i in range(6)]

    await eventually(all_redacted(bob, room, *sent), 30, what="all six redacted for bob")

    async def settled() -> bool:
        return await engine._store.pending_count(room) == 0

    await eventually(settled, 30, what="nothing pending in the room")
    stats = engine.stats
    # Also redacted under the policy: alice's command and the bot's announcement.
    assert stats.done >= len(sent)
    assert stats.fetches <= 2, (stats.fetches, stats.done)
    assert stats.echoed >= stats.done - 2, (stats.echoed, stats.done)
    row = await engine.room(room)
    assert row is not None and row.redacted_count == stats.done
