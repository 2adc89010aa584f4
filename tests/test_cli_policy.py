"""`lethe policy show|set|clear` against a real Synapse: set while the bot is stopped and
applied (and announced) when it starts, set while it runs, refused without power, and
bad input that changes nothing."""

from __future__ import annotations

from tests.cli_harness import lethe_cli, one_line_error, out_json, text_fields
from tests.harness import bot_room, eventually, stays

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"
OPERATOR = "The bot's operator changed the retention policy"


async def test_policy_set_while_stopped_applies_on_start(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    await lethe.stop()

    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "3s")
    assert result.exit_code == 0, result.output
    assert "policy set to after-send 3s" in result.stdout
    assert await alice.get_state(room, LETHE) == {"mode": "after_send", "timer_ms": 3000}
    assert await alice.get_state(room, BEEPER) == {"type": "after_send", "timer": 3000}
    shown = out_json(await lethe_cli(lethe.config, "policy", "show", room, "--json"))
    assert shown["policy"]["mode"] == "after_send" and shown["policy"]["timer_ms"] == 3000
    assert shown["policy_sender"] == lethe.user_id and shown["can_enforce"] is True
    # Lethe's database still has the old policy: the bot has not seen the change yet.
    assert shown["lethe_policy"]["mode"] == "off"

    await lethe.start()
    notice = await alice.wait_notice(room, OPERATOR)
    assert "after-send 3s" in notice, notice
    doomed = await alice.send(room, "canary-cli-policy gone in three seconds")
    await eventually(lambda: bob.is_redacted(room, doomed), 20,
                     what="redaction under the policy set by the CLI")
    text = await lethe_cli(lethe.config, "policy", "show", room)
    assert text.exit_code == 0, text.output
    fields = text_fields(text.stdout)
    assert fields["Policy"].startswith("after-send 3s")
    assert fields["Set by"] == lethe.user_id and fields["Enforced"].startswith("yes")
    assert "Lethe applies" not in text.stdout  # the bot caught up


async def test_policy_set_and_clear_while_running(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 1h")

    async def no_operator_notice() -> bool:
        return not any(OPERATOR in t for t in await alice.notices(room))

    # The bot's own command wrote the state from its account too: not announced twice.
    assert await stays(no_operator_notice, 2), "an in-room command was announced twice"

    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-read", "1m",
                             "--cap", "1h", "--readers", "any")
    assert result.exit_code == 0, result.output
    assert await alice.get_state(room, LETHE) == {
        "mode": "after_read", "timer_ms": 60_000, "cap_ms": 3_600_000, "readers": "any"}
    assert await alice.get_state(room, BEEPER) == {"type": "after_read", "timer": 60_000}
    notice = await alice.wait_notice(room, OPERATOR)
    assert "after-read 1m, cap 1h, readers any" in notice, notice

    cleared = await lethe_cli(lethe.config, "policy", "clear", room)
    assert cleared.exit_code == 0, cleared.output
    assert await alice.get_state(room, LETHE) == {"mode": "off"}
    assert await alice.get_state(room, BEEPER) == {}
    await alice.wait_notice(room, f"{OPERATOR}: off")
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine

    async def off_in_database() -> bool:
        row = await engine.room(room)
        return row is not None and not row.policy.active

    await eventually(off_in_database, 20, what="the bot applying 'off'")


async def test_bad_policy_input_changes_nothing(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 1h")
    await lethe.stop()
    before = (await alice.get_state(room, LETHE), await alice.get_state(room, BEEPER))
    for args, needle in (
        (("--after-send", "5m", "--after-read", "5m"), "exactly one"),
        ((), "exactly one"),
        (("--after-send", "soon"), "--after-send"),
        (("--after-send", "0s"), "too short"),
        (("--after-send", "5m", "--cap", "1h"), "--cap"),
        (("--after-read", "2h", "--cap", "1h"), "cap must be at least"),
        (("--after-read", "1x"), "--after-read"),
    ):
        result = await lethe_cli(lethe.config, "policy", "set", room, *args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in one_line_error(result), (args, result.stderr)
    bad_choice = await lethe_cli(lethe.config, "policy", "set", room, "--after-read", "5m",
                                 "--readers", "some")
    assert bad_choice.exit_code == 2 and "Traceback" not in bad_choice.output
    assert (await alice.get_state(room, LETHE), await alice.get_state(room, BEEPER)) == before


async def test_policy_set_without_power_is_refused(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, bot_power=None)  # the bot has level 0
    result = await lethe_cli(lethe.config, "policy", "set", room, "--after-send", "1h")
    assert result.exit_code == 1, result.output
    error = one_line_error(result)
    assert "may not change the policy" in error and "power level 50" in error, error
    assert "Nothing was changed" in error
    assert await alice.get_state(room, LETHE) is None
    assert await alice.get_state(room, BEEPER) is None
    cleared = await lethe_cli(lethe.config, "policy", "clear", room)
    assert cleared.exit_code == 1 and "Nothing was changed" in one_line_error(cleared)
