"""`lethe audit` and `lethe purge` against a real Synapse: the audit finds a message
left unredacted past its due time (judged under the policy in force when it was
sent) and passes once it is gone; purge asks, dry-runs, refuses without power and
redacts with verification. Plus the audit's rules, on plain values."""

from __future__ import annotations

import json

from bot.cli.audit import judge
from bot.cli.history import PastEvent
from bot.engine.policy import Policy
from tests.cli_harness import lethe_cli, one_line_error, out_json
from tests.harness import bot_room, eventually

MIN = 60_000


async def _audit(config, room: str, *args: str):
    return await lethe_cli(config, "audit", room, "--grace", "0", "--json", *args)


async def test_audit_finds_an_overdue_message_and_passes_once_it_is_gone(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s")
    handled = await alice.send(room, "redacted by the bot in time")
    await eventually(lambda: bob.is_redacted(room, handled), 20, what="the bot at work")
    await lethe.stop()

    missed = await alice.send(room, "canary-audit nobody redacts this while the bot is down")
    # Then the policy is turned off (by the CLI, the bot still stopped): what is sent
    # now is kept, and must not count, although after-send 2s is in the history.
    assert (await lethe_cli(lethe.config, "policy", "clear", room)).exit_code == 0
    kept = await alice.send(room, "sent under off: kept")

    found: dict = {}

    async def overdue_listed() -> bool:
        result = await _audit(lethe.config, room)
        assert result.exit_code in (0, 1), result.output
        found.update(json.loads(result.stdout))
        return result.exit_code == 1

    await eventually(overdue_listed, 20, interval=0.5, what="the audit to flag the message")
    overdue = {o["event_id"] for o in found["overdue"]}
    assert missed in overdue
    assert handled not in overdue and kept not in overdue
    assert found["clean"] is False and found["due"] >= 2
    row = next(o for o in found["overdue"] if o["event_id"] == missed)
    assert row["due"] == row["sent"] + 2000 and row["sender"] == alice.user_id

    text = await lethe_cli(lethe.config, "audit", room, "--grace", "0")
    assert text.exit_code == 1 and "NOT CLEAN" in text.stdout and missed in text.stdout
    assert "canary-audit" not in text.output
    # A window that starts after the message was sent does not see it.
    recent = await lethe_cli(lethe.config, "audit", room, "--grace", "0", "--since", "1s")
    assert recent.exit_code == 0, recent.output
    # With the default grace of a minute, a message late by seconds is not (yet) a finding.
    assert (await lethe_cli(lethe.config, "audit", room)).exit_code == 0

    await lethe.start()  # catches up on the gap and redacts what is due
    await eventually(lambda: bob.is_redacted(room, missed), 30, what="the late redaction")
    # The policy notice the bot had pinned goes too, once the bot has unpinned it (off).
    async def audit_clean() -> bool:
        return (await lethe_cli(lethe.config, "audit", room, "--grace", "0")).exit_code == 0
    await eventually(audit_clean, 30, interval=0.5, what="the audit clean")
    clean = await lethe_cli(lethe.config, "audit", room, "--grace", "0")
    assert clean.exit_code == 0, clean.output
    assert "Clean" in clean.stdout
    assert not await bob.is_redacted(room, kept)


async def test_audit_of_a_clean_after_read_room_says_what_it_checked(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")
    await alice.send(room, "!lethe after-read 1s cap 2s")
    await alice.wait_notice(room, "changed the retention policy: after-read 1s, cap 2s")
    unread = await alice.send(room, "nobody reads this; the cap takes it")
    await eventually(lambda: bob.is_redacted(room, unread), 20, what="redaction at the cap")
    await alice.send(room, "!lethe after-send 1h")
    await alice.wait_notice(room, "changed the retention policy: after-send 1h")
    fresh = await alice.send(room, "not due for an hour")

    result = await _audit(lethe.config, room)
    data = out_json(result)
    assert data["clean"] is True and data["overdue"] == []
    assert data["checked"] >= 4 and data["due"] >= 1
    assert any("cap" in note for note in data["notes"])
    text = await lethe_cli(lethe.config, "audit", room, "--grace", "0")
    assert text.exit_code == 0 and "Clean" in text.stdout and "cap" in text.stdout
    assert fresh not in text.stdout


async def test_purge_dry_run_confirmation_and_redaction(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob")  # policy off: all kept
    old = [await alice.send(room, "old one"), await bob.send(room, "old two")]
    old.append(await bob.react(room, old[0]))
    listed: dict = {}

    async def old_enough() -> bool:
        result = await lethe_cli(lethe.config, "purge", room, "--older-than", "4s",
                                 "--dry-run", "--json")
        listed.update(out_json(result))
        return set(old) <= {e["event_id"] for e in listed["events"]}

    await eventually(old_enough, 20, interval=0.5, what="the messages to be 4 s old")
    assert listed["dry_run"] is True and listed["redacted"] == 0
    newer = await alice.send(room, "too recent to purge")

    dry = await lethe_cli(lethe.config, "purge", room, "--older-than", "4s", "--dry-run")
    assert dry.exit_code == 0 and "nothing was changed" in dry.stdout
    assert all(e in dry.stdout for e in old)
    refused = await lethe_cli(lethe.config, "purge", room, "--older-than", "4s", input="n\n")
    assert refused.exit_code == 1 and "not confirmed" in one_line_error(refused)
    for event_id in [*old, newer]:
        assert not await alice.is_redacted(room, event_id), "a dry run or a 'no' changed things"

    done = await lethe_cli(lethe.config, "purge", room, "--older-than", "4s", "--yes", "--json")
    report = out_json(done)
    assert report["failed"] == 0 and report["matched"] == report["redacted"] + report["gone"]
    assert set(old) <= {e["event_id"] for e in report["events"] if e["outcome"] == "redacted"}
    for event_id in old:
        assert await bob.is_redacted(room, event_id)
    assert not await bob.is_redacted(room, newer)
    again = await lethe_cli(lethe.config, "purge", room, "--older-than", "4s", "--yes")
    assert again.exit_code == 0 and "Nothing to purge" in again.stdout


async def test_purge_without_power_redacts_nothing(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", bot_power=None)
    theirs = await bob.send(room, "the bot may not redact this")

    async def old_enough() -> bool:
        result = await lethe_cli(lethe.config, "purge", room, "--older-than", "1s",
                                 "--dry-run", "--json")
        return theirs in {e["event_id"] for e in out_json(result)["events"]}

    await eventually(old_enough, 20, interval=0.5, what="the message to be 1 s old")
    result = await lethe_cli(lethe.config, "purge", room, "--older-than", "1s", "--yes")
    assert result.exit_code == 1, result.output
    error = one_line_error(result)
    assert "cannot redact" in error and "Nothing was redacted" in error, error
    assert not await alice.is_redacted(room, theirs)


# --- the audit's rules on plain values --------------------------------------------------


def _event(event_id: str, ts: int, policy: Policy, *, parent: str | None = None,
           redacted: bool = False, joined: bool = True) -> PastEvent:
    return PastEvent(event_id, "m.room.message", "@a:x", ts, parent, redacted, policy, joined)


def test_judge_applies_the_policy_in_force_when_sent() -> None:
    now = 100 * MIN
    send5 = Policy.after_send(5 * MIN)
    read = Policy.after_read(1 * MIN, 30 * MIN)
    events = [  # oldest first here; judge takes newest first
        _event("$before-join", 0, send5, joined=False),
        _event("$off", 1 * MIN, Policy.off()),
        _event("$late", 2 * MIN, send5),
        _event("$gone", 3 * MIN, send5, redacted=True),
        _event("$reaction", 4 * MIN, Policy.off(), parent="$late"),
        _event("$late-reply", 8 * MIN, Policy.off(), parent="$late"),  # after its parent's due
        _event("$read", 60 * MIN, read),  # cap 30m: due at 90m
        _event("$read-young", 80 * MIN, read),  # due at 110m
        _event("$grace", 94 * MIN, send5),  # due at 99m: within a 2m grace
    ]
    found = judge(list(reversed(events)), now, grace_ms=2 * MIN)
    assert {o.event.event_id for o in found.overdue} == {"$late", "$reaction", "$read"}
    assert {o.event.event_id: o.due for o in found.overdue} == {
        "$late": 7 * MIN, "$reaction": 7 * MIN, "$read": 90 * MIN}
    assert found.due == 4 and found.checked == len(events) and found.after_read
    assert judge(list(reversed(events)), now, grace_ms=0).due == 5


def test_judge_follows_only_the_bots_expiry_of_a_parent() -> None:
    """A reaction goes with its message when Lethe expires that message; when the
    sender deleted the message themselves, the reaction (sent while off) was never due."""
    now = 100 * MIN
    send5 = Policy.after_send(5 * MIN)
    deleted = PastEvent("$deleted", "m.room.message", "@a:x", 1 * MIN, None, True, send5,
                        True, "@a:x")
    expired = PastEvent("$expired", "m.room.message", "@a:x", 2 * MIN, None, True, send5,
                        True, "@bot:x")
    events = [  # oldest first
        deleted, expired,
        _event("$on-deleted", 3 * MIN, Policy.off(), parent="$deleted"),
        _event("$on-expired", 3 * MIN, Policy.off(), parent="$expired"),
    ]
    found = judge(list(reversed(events)), now, grace_ms=0, bot_user_id="@bot:x")
    assert {o.event.event_id for o in found.overdue} == {"$on-expired"}
