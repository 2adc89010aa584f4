"""The mirror of a room's policy in ``m.room.retention`` (MSC1763) against a real Synapse:
set, updated and cleared with the policy (in-room command, state, `lethe policy`), the
after_read cap mirrored, a lack of power reported without failing the policy change,
somebody else's ``m.room.retention`` left alone until the policy changes (no loop), and
the opt-in read back from room state after a lost database."""

from __future__ import annotations

from bot.engine.policy import Policy
from tests.cli_harness import lethe_cli, one_line_error, out_json, text_fields
from tests.harness import BotHandle, bot_room, eventually, stays
from tests.test_continuity import lose_database

LETHE = "chat.lethe.policy"
RETENTION = "m.room.retention"
H = 3_600_000


async def test_the_mirror_follows_every_change_of_the_policy(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe)
    assert await alice.get_state(room, RETENTION) is None

    await alice.send(room, "!lethe after-send 1h retention on")
    notice = await alice.wait_notice(room, "changed the retention policy: after-send 1h")
    assert "mirrored into m.room.retention (max_lifetime 1h)" in notice, notice
    assert "those sent before this policy too" in notice, notice
    assert await alice.get_state(room, LETHE) == {
        "mode": "after_send", "timer_ms": H, "mirror_retention": True}
    assert await alice.get_state(room, RETENTION) == {"max_lifetime": H}

    # after_read: the cap is what Synapse gets. No retention option: the opt-in stays.
    await alice.send(room, "!lethe after-read 5m cap 2h")
    await alice.wait_notice(room, "changed the retention policy: after-read 5m, cap 2h")
    assert await alice.get_state(room, RETENTION) == {"max_lifetime": 2 * H}
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Mirror in m.room.retention:")
    assert "on, in step: m.room.retention says max_lifetime 2h" in status, status

    # Set by state, as any client with the power may: mirrored too.
    assert await alice.put_state(room, LETHE, {"mode": "after_send", "timer_ms": 60_000,
                                               "mirror_retention": True}) == 200
    await alice.wait_notice(room, f"{alice.user_id} changed the retention policy: after-send 1m")
    await eventually(lambda: _says(alice, room, {"max_lifetime": 60_000}), 20,
                     what="the mirror of a policy set by state")

    # Off, the mirror on: m.room.retention says nothing (Synapse keeps no policy of the
    # room's own).
    await alice.send(room, "!lethe off")
    await alice.wait_notice(room, "changed the retention policy: off (messages are kept); "
                                  "mirrored into m.room.retention (no max_lifetime)")
    assert await alice.get_state(room, RETENTION) == {}

    # The opt-in off: Lethe's own mirror is withdrawn and not written again.
    await alice.send(room, "!lethe after-send 30m")
    await eventually(lambda: _says(alice, room, {"max_lifetime": 1_800_000}), 20,
                     what="the mirror back on with a rule")
    await alice.send(room, "!lethe retention off")
    notice = await alice.wait_notice(room, "The mirror in m.room.retention is withdrawn")
    assert "after-send 30m (each message" in notice and "mirrored" not in notice, notice
    assert await alice.get_state(room, RETENTION) == {}
    assert await alice.get_state(room, LETHE) == {"mode": "after_send", "timer_ms": 1_800_000}
    await alice.send(room, "!lethe after-send 2h")
    await alice.wait_notice(room, "changed the retention policy: after-send 2h")
    assert await alice.get_state(room, RETENTION) == {}


async def test_no_power_for_the_mirror_is_said_and_the_policy_still_changes(
    people, lethe
) -> None:
    alice, _, room = await bot_room(people, lethe)
    levels = await alice.get_state(room, "m.room.power_levels")
    assert levels is not None
    levels.setdefault("events", {})[RETENTION] = 100
    assert await alice.put_state(room, "m.room.power_levels", levels) == 200

    await alice.send(room, "!lethe after-send 1h retention on")
    notice = await alice.wait_notice(room, "changed the retention policy: after-send 1h")
    assert f"Mirror: {lethe.user_id} may not send m.room.retention here (it needs power " \
           "level 100" in notice, notice
    assert "the policy itself is in force" in notice, notice
    assert await alice.get_state(room, LETHE) == {
        "mode": "after_send", "timer_ms": H, "mirror_retention": True}
    assert await alice.get_state(room, RETENTION) is None
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine

    async def in_force() -> bool:
        row = await engine.room(room)
        return row is not None and row.policy == Policy.after_send(H).mirrored(True)

    await eventually(in_force, 20, what="the bot applying the policy it could not mirror")

    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Mirror in m.room.retention:")
    assert "on, NOT in step: no m.room.retention in the room, the policy says " \
           "max_lifetime 1h" in status, status
    assert "may not send it (needs power level 100" in status, status

    # The CLI changes the policy too, and warns.
    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "2h")
    assert result.exit_code == 0, result.output
    assert "policy set to after-send 2h" in result.stdout
    assert "may not send m.room.retention here (it needs power level 100" in result.stderr
    assert await alice.get_state(room, LETHE) == {
        "mode": "after_send", "timer_ms": 2 * H, "mirror_retention": True}
    assert await alice.get_state(room, RETENTION) is None


async def test_somebody_elses_retention_stays_until_the_policy_changes(people, lethe) -> None:
    alice, _, room = await mirrored_room(people, lethe)
    week = {"max_lifetime": 7 * 24 * H}
    assert await alice.put_state(room, RETENTION, week) == 200

    # Lethe never answers an m.room.retention event: no fight, no loop.
    assert await stays(lambda: _says(alice, room, week), 3), "Lethe overwrote it unasked"
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Mirror in m.room.retention:")
    assert f"on, NOT in step: m.room.retention says max_lifetime 1w (set by {alice.user_id})" \
        in status, status

    # A change of the policy is a deliberate act of somebody allowed to make it: the
    # mirror wins then.
    await alice.send(room, "!lethe after-send 2h")
    await alice.wait_notice(room, "changed the retention policy: after-send 2h")
    assert await alice.get_state(room, RETENTION) == {"max_lifetime": 2 * H}


async def test_the_opt_in_survives_a_lost_database(people, lethe) -> None:
    alice, _, room = await mirrored_room(people, lethe)
    await lethe.stop()
    lose_database(lethe.config)
    # Emptied while the bot was away: on first sight it is filled again (it is not
    # somebody else's policy; a non-empty one would be left alone).
    assert await alice.put_state(room, RETENTION, {}) == 200

    again = BotHandle(lethe.config)
    try:
        await again.start()
        await eventually(lambda: _says(alice, room, {"max_lifetime": H}), 30,
                         what="the mirror filled again from the opt-in in room state")
        assert again.bot is not None and again.bot.engine is not None
        row = await again.bot.engine.room(room)
        assert row is not None and row.policy.mirror_retention
        await alice.send(room, "!lethe after-send 3h")
        await alice.wait_notice(room, "changed the retention policy: after-send 3h")
        assert await alice.get_state(room, RETENTION) == {"max_lifetime": 3 * H}
    finally:
        await again.stop()


async def test_policy_set_retention_flags(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe)
    await lethe.stop()

    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-read", "1m",
                             "--cap", "3h", "--retention")
    assert result.exit_code == 0, result.output
    assert "m.room.retention says max_lifetime 3h" in result.stdout, result.stdout
    assert await alice.get_state(room, RETENTION) == {"max_lifetime": 3 * H}
    shown = out_json(await lethe_cli(lethe.config, "policy", "show", room, "--json"))
    assert shown["retention"] == {
        "mirror": True, "content": {"max_lifetime": 3 * H}, "sender": lethe.user_id,
        "text": f"on, in step: m.room.retention says max_lifetime 3h (set by {lethe.user_id})"}
    text = await lethe_cli(lethe.config, "policy", "show", room)
    assert text_fields(text.stdout)["Mirror"].startswith("on, in step"), text.stdout

    # The flag alone keeps the rule and changes only the mirror: withdrawn.
    result = await lethe_cli(lethe.config, "policy", "set", room, "--no-retention")
    assert result.exit_code == 0, result.output
    assert "m.room.retention emptied" in result.stdout, result.stdout
    assert await alice.get_state(room, LETHE) == {
        "mode": "after_read", "timer_ms": 60_000, "cap_ms": 3 * H, "readers": "all"}
    assert await alice.get_state(room, RETENTION) == {}

    result = await lethe_cli(lethe.config, "policy", "clear", room, "--retention")
    assert result.exit_code == 0, result.output
    assert await alice.get_state(room, LETHE) == {"mode": "off", "mirror_retention": True}
    assert await alice.get_state(room, RETENTION) == {}

    before = await alice.get_state(room, LETHE)
    for args, needle in ((("--retention", "--cap", "1h"), "exactly one"),
                         (("--retention", "--readers", "any"), "exactly one")):
        bad = await lethe_cli(lethe.config, "policy", "set", room, *args)
        assert bad.exit_code == 2, (args, bad.output)
        assert needle in one_line_error(bad), bad.stderr
    assert await alice.get_state(room, LETHE) == before


async def mirrored_room(people, lethe) -> tuple:
    """A room with the bot, after-send 1h, mirrored."""
    alice, others, room = await bot_room(people, lethe)
    await alice.send(room, "!lethe after-send 1h retention on")
    await alice.wait_notice(room, "changed the retention policy: after-send 1h")
    assert await alice.get_state(room, RETENTION) == {"max_lifetime": H}
    return alice, others, room


async def _says(person, room: str, content: dict[str, int]) -> bool:
    return await person.get_state(room, RETENTION) == content
