"""Rooms and in-room commands, end to end against a real Synapse, in encrypted rooms:
invites, who may change the policy, enforcement without power, policies written
straight into room state, edits and reactions following their message, help and
malformed commands, and leaving an empty room."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from nio import JoinedRoomsResponse

from tests.cli_harness import lethe_cli
from tests.harness import (
    BotHandle,
    Person,
    bot_room,
    eventually,
    stays,
    unique,
    write_bot_config,
)

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"


async def _memberships(person: Person, room_id: str, user_id: str) -> list[str]:
    """The membership history of ``user_id`` in the room, oldest first, as ``person``
    sees it in the timeline."""
    status, data = await person.api(
        "GET", f"/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": "100"})
    assert status == 200, data
    found = [
        (event.get("content") or {}).get("membership")
        for event in data.get("chunk", [])
        if event.get("type") == "m.room.member" and event.get("state_key") == user_id
    ]
    return list(reversed(found))


async def _member_state(person: Person, room_id: str, user_id: str) -> dict[str, Any] | None:
    status, data = await person.api(
        "GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}")
    return data if status == 200 else None


async def _bot_joined_rooms(handle: BotHandle) -> list[str]:
    assert handle.bot is not None and handle.bot.client is not None
    resp = await handle.bot.client.joined_rooms()
    assert isinstance(resp, JoinedRoomsResponse), resp
    return list(resp.rooms)


async def _count(person: Person, room_id: str, needle: str) -> int:
    return sum(needle.lower() in text.lower() for text in await person.notices(room_id))


async def _wait_new_notice(person: Person, room_id: str, needle: str, before: int,
                           timeout: float = 20.0) -> str:
    """Wait for one more notice containing ``needle`` than the ``before`` already seen."""
    found: list[str] = []

    async def seen() -> bool:
        texts = [t for t in await person.notices(room_id) if needle.lower() in t.lower()]
        if len(texts) > before:
            found.append(texts[0])  # newest first
            return True
        return False

    await eventually(seen, timeout, interval=0.3, what=f"a new notice containing {needle!r}")
    return found[0]


# --- 1. invites ----------------------------------------------------------------


async def test_joins_on_allowed_invite_and_refuses_others(
    people, synapse, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="bot.front")
    alice = await people("alice")
    mallory = await people("mallory")
    handle = BotHandle(write_bot_config(synapse, tmp_path / "b2",
                                        invites={"allow": [alice.user_id]}))
    try:
        await handle.start()
        bot = handle.user_id

        welcome = await alice.create_room([bot], power={bot: 50})
        await alice.wait_notice(welcome, "Lethe is here")
        assert welcome in await _bot_joined_rooms(handle)

        lair = await mallory.create_room([bot], power={bot: 50})
        # The invite is rejected: invite -> leave, never join.
        async def rejected() -> bool:
            state = await _member_state(mallory, lair, bot)
            return state is not None and state.get("membership") == "leave"

        await eventually(rejected, 20, what="the bot's invite to mallory's room rejected")
        assert await _memberships(mallory, lair, bot) == ["invite", "leave"]
        assert lair not in await _bot_joined_rooms(handle)
        assert not await mallory.notices(lair)
        refusals = [r.getMessage() for r in caplog.records
                    if r.levelno >= logging.WARNING and "refusing invite" in r.getMessage()]
        assert any(lair in m and mallory.user_id in m for m in refusals), refusals
        assert not any(welcome in m for m in refusals), refusals
    finally:
        await handle.stop()


# --- 2. unauthorized command ---------------------------------------------------------


async def test_unauthorized_command_is_refused_and_policy_unchanged(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")

    # bob (power 0) with no policy yet: refused, state stays absent.
    await bob.send(room, "!lethe after-send 5s")
    refusal = await alice.wait_notice(room, "you may not change the retention policy")
    assert bob.user_id in refusal and "power level 50" in refusal, refusal
    assert "Nothing was changed" in refusal, refusal
    assert await alice.get_state(room, LETHE) is None
    assert await alice.get_state(room, BEEPER) is None

    # With a policy set by alice, bob's attempt leaves it as it was.
    await alice.send(room, "!lethe after-send 1h")
    await alice.wait_notice(room, "changed the retention policy: after-send 1h")
    lethe_before = await alice.get_state(room, LETHE)
    beeper_before = await alice.get_state(room, BEEPER)
    assert lethe_before is not None and lethe_before.get("mode") == "after_send"
    assert beeper_before == {"type": "after_send", "timer": 3_600_000}

    before = await _count(alice, room, "you may not change the retention policy")
    await bob.send(room, "!lethe off")
    await _wait_new_notice(alice, room, "you may not change the retention policy", before)
    assert await alice.get_state(room, LETHE) == lethe_before
    assert await alice.get_state(room, BEEPER) == beeper_before
    assert not any("changed the retention policy: off" in t for t in await alice.notices(room))
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement:")
    assert "after-send 1h" in status, status


# --- 3. no power ---------------------------------------------------------------------


async def test_bot_without_power_says_so_and_keeps_pending(people, lethe) -> None:
    alice = await people("alice")
    room = await alice.create_room([lethe.user_id])  # no power for the bot
    await lethe.start()
    warning = await alice.wait_notice(room, "I cannot redact")
    assert "50" in warning, warning

    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement:")
    assert "Enforcement: NO" in status, status
    assert "50" in status, status

    # The bot cannot write room state, but alice can: after-send 2s while powerless.
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 2000}) == 200
    await alice.wait_notice(room, f"{alice.user_id} changed the retention policy: after-send 2s")
    doomed = await alice.send(room, "canary-powerless this should go once I have power")

    async def intact() -> bool:
        return not await alice.is_redacted(room, doomed)

    # Due after 2 s, but nothing can redact it: it stays past its deadline.
    assert await stays(intact, 3.5), "redacted although the bot has no power"
    assert lethe.bot is not None and lethe.bot.engine is not None
    pending = await lethe.bot.engine.status(room)
    assert pending is not None and pending.pending >= 1, pending

    await alice.set_power(room, lethe.user_id, 50)
    await eventually(lambda: alice.is_redacted(room, doomed), 20,
                     what="the message kept while powerless redacted once power is given")

    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement: yes")
    assert "50" in status, status


# --- 4. policy straight in room state ---------------------------------------------------


async def test_policy_set_in_room_state_is_honoured(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")

    # Beeper's event, as a Beeper client or a mautrix bridge would write it.
    assert await alice.put_state(room, BEEPER, {"type": "after_send", "timer": 2000}) == 200
    await alice.wait_notice(room, f"{alice.user_id} changed the retention policy: after-send 2s")
    first = await alice.send(room, "canary-beeper-state gone in two seconds")
    await eventually(lambda: bob.is_redacted(room, first), 15,
                     what="redaction under Beeper's event")

    # Lethe's own event.
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 3000}) == 200
    await alice.wait_notice(room, f"{alice.user_id} changed the retention policy: after-send 3s")
    second = await alice.send(room, "canary-lethe-state gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, second), 15,
                     what="redaction under Lethe's event")

    # Nonsense in Lethe's event: announced as ignored, the previous policy stays.
    assert await alice.put_state(room, LETHE, {"mode": "sometimes"}) == 200
    ignored = await alice.wait_notice(room, "Ignoring the chat.lethe.policy state event")
    assert alice.user_id in ignored and "unchanged" in ignored, ignored
    third = await alice.send(room, "canary-after-invalid still gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, third), 15,
                     what="redaction under the policy in force before the invalid event")
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement:")
    assert "after-send 3s" in status, status


# --- 5. edits and reactions go with their message ------------------------------------


async def test_edits_and_reactions_go_with_their_message(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")

    await alice.send(room, "!lethe after-send 4s")
    await alice.wait_notice(room, "changed the retention policy: after-send 4s")
    parent = await alice.send(room, "canary-parent the meeting is at noon")
    await alice.send(room, "!lethe off")
    await alice.wait_notice(room, "changed the retention policy: off")
    # Sent under 'off': nothing but the cascade from their parent can remove them.
    reaction = await bob.react(room, parent, "👍")
    edit = await alice.edit(room, parent, "canary-parent the meeting is at one")
    assert not await alice.is_redacted(room, parent), "parent redacted before its children came"

    await eventually(lambda: bob.is_redacted(room, parent), 15, what="the parent redacted")
    await eventually(lambda: bob.is_redacted(room, reaction), 15, what="the reaction redacted")
    await eventually(lambda: bob.is_redacted(room, edit), 15, what="the edit redacted")

    # Under 'off', an unrelated message stays.
    other = await alice.send(room, "canary-unrelated this one stays")

    async def kept() -> bool:
        return not await bob.is_redacted(room, other)

    assert await stays(kept, 2), "a message sent under 'off' was redacted"


# --- 6. help and malformed commands --------------------------------------------------


async def test_help_and_malformed_command(people, lethe) -> None:
    alice = await people("alice")
    room = await alice.create_room([lethe.user_id], power={lethe.user_id: 50})
    await lethe.start()
    await alice.wait_notice(room, "Lethe is here")

    await alice.send(room, "!lethe help")
    help_text = await alice.wait_notice(room, "!lethe after-read DUR")
    for needle in ("!lethe status", "!lethe off", "!lethe after-send DUR", "Durations"):
        assert needle in help_text, help_text

    await alice.send(room, "!lethe after-send soon")
    error = await alice.wait_notice(room, "'soon'")
    assert alice.user_id in error and "duration" in error, error
    assert await alice.get_state(room, LETHE) is None
    assert await alice.get_state(room, BEEPER) is None
    assert not any("changed the retention policy" in t for t in await alice.notices(room))

    await alice.send(room, "!lethe sometimes")
    unknown = await alice.wait_notice(room, "unknown command")
    assert "!lethe help" in unknown, unknown
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement:")
    assert "Policy: off" in status, status


# --- 7. last member ------------------------------------------------------------------


async def test_bot_leaves_when_last_member(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    assert room in await _bot_joined_rooms(lethe)

    await alice.client.room_leave(room)

    async def still_in() -> bool:
        return room in await _bot_joined_rooms(lethe)

    # bob is still there: the bot stays.
    assert await stays(still_in, 2), "the bot left although bob is still in the room"

    await bob.client.room_leave(room)
    await eventually(lambda: _not(still_in), 20, what="the bot to leave the empty room")
    assert lethe.bot is not None and lethe.bot.engine is not None
    await eventually(lambda: _is_none(lethe.bot.engine.room(room)), 10,
                     what="the room forgotten by the engine")


async def _not(predicate) -> bool:
    return not await predicate()


async def _is_none(awaitable) -> bool:
    return await awaitable is None


# --- 8. who may change the policy through room state -----------------------------------


async def _restrict_policy_events(alice: Person, room: str, users: dict[str, int],
                                  **events: int) -> None:
    """Power levels with ``users`` added and ``events`` (event type: level) required."""
    current = await alice.get_state(room, "m.room.power_levels") or {}
    current["users"] = {**current.get("users", {}), **users}
    current["events"] = {**current.get("events", {}), **events}
    assert await alice.put_state(room, "m.room.power_levels", current) == 200


async def _state_event_id(person: Person, room: str, event_type: str) -> str:
    status, data = await person.api("GET", f"/rooms/{quote(room)}/state")
    assert status == 200, data
    return next(e["event_id"] for e in data
                if e.get("type") == event_type and e.get("state_key") == "")


async def test_redacting_the_policy_events_does_not_turn_the_policy_off(
    people, lethe
) -> None:
    """A moderator who may redact but not send the policy events redacts both. Their
    content is pruned to {}, which must not read as "off" (at the next start, when the
    bot reads the room's state), nor be announced as the setter's change."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", bot_power=100)
    await _restrict_policy_events(alice, room, {bob.user_id: 50}, **{LETHE: 100, BEEPER: 100})
    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")
    for event_type in (LETHE, BEEPER):
        target = await _state_event_id(alice, room, event_type)
        status, data = await bob.api(
            "PUT", f"/rooms/{quote(room)}/redact/{quote(target)}/t{unique('r')}",
            {"reason": "turning it off"})
        assert status == 200, data
    assert await alice.get_state(room, LETHE) == {}
    assert await alice.get_state(room, BEEPER) == {}

    await lethe.stop()
    await lethe.start()
    doomed = await alice.send(room, "canary-after-redacted-policy still gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, doomed), 20,
                     what="redaction under the policy in force before the redactions")
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Enforcement:")
    assert "after-send 3s" in status, status
    assert not any("retention policy: off" in t for t in await alice.notices(room))


async def test_the_bots_own_policy_write_redacted_before_it_synced_still_counts(
    people, lethe
) -> None:
    """The race behind the test above: bob redacts the bot's policy events before the
    bot's sync has brought them back, and the bot restarts. It knows what it wrote."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", bot_power=100)
    await _restrict_policy_events(alice, room, {bob.user_id: 50}, **{LETHE: 100, BEEPER: 100})
    bot = lethe.bot
    assert bot is not None and bot.sync_loop is not None
    sync_loop, actions = bot.sync_loop, bot.actions
    gate = asyncio.Event()
    gate.set()
    on_sync, set_policy = sync_loop._on_sync, actions._set_policy

    async def held_sync(*args: Any) -> None:
        await gate.wait()
        await on_sync(*args)

    async def set_then_hold(*args: Any) -> None:
        await set_policy(*args)
        gate.clear()  # no sync is handled after the write: its echo is not seen

    sync_loop._on_sync = held_sync  # type: ignore[method-assign]
    actions._set_policy = set_then_hold  # type: ignore[method-assign]
    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")
    assert not gate.is_set()
    for event_type in (LETHE, BEEPER):
        target = await _state_event_id(alice, room, event_type)
        status, data = await bob.api(
            "PUT", f"/rooms/{quote(room)}/redact/{quote(target)}/t{unique('r')}", {})
        assert status == 200, data

    await lethe.stop()
    await lethe.start()
    doomed = await alice.send(room, "canary-own-write still gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, doomed), 20,
                     what="redaction under the policy the bot wrote")


async def test_a_state_change_needs_power_for_both_policy_events(people, lethe) -> None:
    """bob may send Beeper's event (level 50) but not Lethe's (100): the homeserver
    takes his Beeper event, Lethe refuses it as it refuses his command, says so, and
    the policy stays. Once he may send both, his state change counts; the bot's own
    writes (command, `lethe policy set`) pass."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", bot_power=100)
    await _restrict_policy_events(alice, room, {bob.user_id: 50}, **{LETHE: 100})
    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")

    # The command: refused, naming the level Lethe's event needs.
    await bob.send(room, "!lethe off")
    refusal = await alice.wait_notice(room, "you may not change the retention policy")
    assert bob.user_id in refusal and "power level 100" in refusal, refusal

    # The state event: the homeserver takes it, Lethe does not.
    assert await bob.put_state(room, BEEPER, {}) == 200
    ignored = await alice.wait_notice(room, f"Ignoring the {BEEPER} state event from "
                                            f"{bob.user_id}")
    assert "power level 100" in ignored and "unchanged" in ignored, ignored
    assert not any("retention policy: off" in t for t in await alice.notices(room))
    doomed = await alice.send(room, "canary-after-refused-state still gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, doomed), 20,
                     what="redaction under the policy in force before the refused event")

    # Promoted, bob may send both: his state change counts, announced as his.
    await _restrict_policy_events(alice, room, {bob.user_id: 100})
    assert await bob.put_state(room, BEEPER, {"type": "after_send", "timer": 2000}) == 200
    await alice.wait_notice(room, f"{bob.user_id} changed the retention policy: after-send 2s")

    # The bot's own account passes: `lethe policy set` is applied and announced.
    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "4s")
    assert result.exit_code == 0, result.output
    await alice.wait_notice(room, "operator changed the retention policy: after-send 4s")
