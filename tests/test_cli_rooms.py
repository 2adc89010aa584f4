"""`lethe rooms list|show|leave` and `lethe pending` against a real Synapse, with the bot
running or stopped, and the CLI reading the bot's database while the bot works."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from urllib.parse import quote

from tests.cli_harness import (
    add_alias,
    lethe_cli,
    logged_in,
    one_line_error,
    out_json,
    scheduled,
    text_fields,
)
from tests.harness import bot_room, eventually, unique

LETHE = "chat.lethe.policy"


async def test_rooms_list_and_show(people, lethe, synapse) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 1h")
    alias = f"#{unique('talk')}:{synapse.server_name}"
    await add_alias(alice, room, alias)
    assert await alice.put_state(room, "m.room.canonical_alias", {"alias": alias}) == 200
    # A second room, unencrypted, where the bot has no power.
    weak = await alice.create_room([lethe.user_id], encrypted=False)
    await alice.wait_notice(weak, "I cannot redact")
    canary = f"canary-{secrets.token_hex(6)}"
    sent = [await alice.send(room, f"{canary} number {i}") for i in range(2)]
    await scheduled(lethe, *sent)

    result = await lethe_cli(lethe.config, "rooms", "list", "--json")
    rows = {row["room_id"]: row for row in out_json(result)}
    assert set(rows) == {room, weak}
    mine = rows[room]
    assert mine["alias"] == alias and mine["encrypted"] is True and mine["members"] == 3
    assert mine["policy"]["mode"] == "after_send" and mine["policy"]["timer_ms"] == 3_600_000
    assert mine["can_enforce"] is True and mine["bot_level"] == 50
    assert mine["pending"] >= len(sent)  # the bot's own notices are on the schedule too
    now = time.time() * 1000
    assert now < mine["next_due"] <= now + 3_600_000
    assert rows[weak]["encrypted"] is False and rows[weak]["can_enforce"] is False
    assert rows[weak]["policy"]["mode"] == "off" and rows[weak]["bot_level"] == 0

    text = await lethe_cli(lethe.config, "rooms", "list")
    assert text.exit_code == 0, text.output
    line = next(x for x in text.stdout.splitlines() if room in x)
    assert alias in line and "after-send 1h" in line and "yes" in line, line
    weak_line = next(x for x in text.stdout.splitlines() if weak in x)
    assert "NO (level 0 < 50)" in weak_line, weak_line

    shown = await lethe_cli(lethe.config, "rooms", "show", alias)
    assert shown.exit_code == 0, shown.output
    fields = text_fields(shown.stdout)
    assert fields["Room"] == room and fields["Aliases"] == alias
    assert fields["Encrypted"] == "yes" and bob.user_id in fields["Members"]
    assert fields["Policy"].startswith("after-send 1h")
    assert fields["Enforced"].startswith("yes")
    # Its earliest deadline: a canary's (the pinned policy notice does not expire).
    assert re.match(rf"{mine['pending']}, next due in (59m|1h)", fields["Pending"]), fields
    assert f"{LETHE} by {lethe.user_id}" in shown.stdout
    detail = out_json(await lethe_cli(lethe.config, "rooms", "show", room, "--json"))
    assert set(detail["joined_members"]) == {alice.user_id, bob.user_id, lethe.user_id}
    assert detail["lethe_policy"]["mode"] == "after_send"
    assert {e["type"] for e in detail["policy_events"]} == {
        LETHE, "com.beeper.disappearing_timer"}
    for output in (result.output, text.output, shown.output):
        assert canary not in output


async def test_unknown_rooms_exit_2(people, lethe, synapse) -> None:
    alice, _, room = await bot_room(people, lethe)
    await lethe.stop()
    elsewhere = await alice.create_room([])  # exists, but the bot is not in it
    for args in (
        ("rooms", "show", "!nope:localhost"),
        ("rooms", "show", f"#{unique('nothing')}:{synapse.server_name}"),
        ("rooms", "show", "just-a-name"),
        ("rooms", "leave", elsewhere),
        ("policy", "show", elsewhere),
        ("pending", "!nope:localhost"),
        ("audit", elsewhere),
        ("purge", elsewhere, "--older-than", "1s", "--yes"),
    ):
        result = await lethe_cli(lethe.config, *args)
        assert result.exit_code == 2, (args, result.output)
        error = one_line_error(result)
        assert "room" in error, error
    # A known room still works.
    assert (await lethe_cli(lethe.config, "rooms", "show", room)).exit_code == 0


async def test_rooms_leave(people, lethe) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 1h")
    await scheduled(lethe, await alice.send(room, "something that was scheduled"))
    await lethe.stop()

    result = await lethe_cli(lethe.config, "rooms", "leave", room)
    assert result.exit_code == 0, result.output
    assert f"left {room}" in result.stdout
    assert "scheduled redaction(s) there will not happen" in result.stdout
    status, member = await alice.api(
        "GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(lethe.user_id)}")
    assert status == 200 and member["membership"] == "leave", member
    assert room not in {r["room_id"] for r in out_json(
        await lethe_cli(lethe.config, "rooms", "list", "--json"))}
    again = await lethe_cli(lethe.config, "rooms", "leave", room)
    assert again.exit_code == 2 and "not in it" in one_line_error(again)


async def test_pending_lists_ids_and_times_only(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 1h")
    canary = f"canary-{secrets.token_hex(6)}"
    sent = {await alice.send(room, f"{canary} {i}") for i in range(3)}
    sent.add(await bob.send(room, f"{canary} from bob"))
    await scheduled(lethe, *sent)

    rows = out_json(await lethe_cli(lethe.config, "pending", room, "--json"))
    listed = {row["event_id"]: row for row in rows}
    assert sent <= set(listed)
    for event_id in sent:
        row = listed[event_id]
        assert row["state"] == "waiting" and row["room_id"] == room
        assert row["due"] == row["sent"] + 3_600_000
    assert listed[max(sent)]["sender"] in (alice.user_id, bob.user_id)

    text = await lethe_cli(lethe.config, "pending")
    assert text.exit_code == 0, text.output
    assert all(event_id in text.stdout for event_id in sent)
    assert room in text.stdout and "waiting" in text.stdout
    assert canary not in text.output

    limited = await lethe_cli(lethe.config, "pending", room, "--limit", "2")
    assert limited.exit_code == 0 and "(the first 2; --limit shows more)" in limited.stdout


async def test_cli_reads_while_the_bot_works(people, lethe) -> None:
    """The CLI reads the database (WAL, read-only) again and again while the bot
    ingests and redacts: every read succeeds and sees a consistent schedule, and
    the bot neither stalls nor fails, and its database stays intact."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s")
    bot = lethe.bot
    assert bot is not None and bot.engine is not None
    sent: list[str] = []

    async def chatter() -> None:
        for i in range(12):
            sent.append(await alice.send(room, f"busy message {i}"))
            await bob.receipt(room, sent[-1])

    async def readers() -> list[int]:
        codes = []
        while len(sent) < 12 or len(codes) < 6:
            for args in (("pending", "--json"), ("rooms", "list", "--json"),
                         ("pending", room)):
                result = await lethe_cli(lethe.config, *args)
                codes.append(result.exit_code)
                assert result.exit_code == 0, result.output
                if args[-1] == "--json" and args[0] == "pending":
                    for row in out_json(result):
                        assert row["room_id"] == room and row["state"] in (
                            "waiting", "in_flight")
        return codes

    syncs_before = bot.sync_count
    _, codes = await asyncio.gather(chatter(), readers())
    assert codes and set(codes) == {0}

    async def all_redacted() -> bool:
        for event_id in sent:
            if not await bob.is_redacted(room, event_id):
                return False
        return True

    await eventually(all_redacted, 40, interval=0.5, what="every busy message redacted")
    assert bot.sync_count > syncs_before
    assert lethe.task is not None and not lethe.task.done()
    assert bot.engine.stats.failures == 0
    await lethe.stop()
    with sqlite3.connect(lethe.config.database.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_admin_commands_need_a_login(lethe) -> None:
    """Before `lethe login` there is no saved login: exit 4 with a clear hint."""
    result = await lethe_cli(lethe.config, "rooms", "list")
    assert result.exit_code == 4, result.output
    assert "lethe" in one_line_error(result) and "login" in one_line_error(result)
    await logged_in(lethe)
    assert (await lethe_cli(lethe.config, "rooms", "list")).exit_code == 0


async def test_room_names_with_terminal_escapes_are_printed_escaped(
    people, lethe, synapse
) -> None:
    """A room name is whatever a member wrote: the CLI must not let it drive the
    operator's terminal (set the title, clear the screen, recolour, reorder text, fake
    a line). Text output shows such characters escaped; JSON keeps the name exact."""
    alice, _, room = await bot_room(people, lethe)
    hostile = ("\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202eevil\nlethe: FAKE LINE"
               "\x9b1m\x7f\u2066end")
    assert await alice.put_state(room, "m.room.name", {"name": hostile}) == 200
    raw = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\u2066")

    listed = await lethe_cli(lethe.config, "rooms", "list")
    assert listed.exit_code == 0, listed.output
    assert not any(c in listed.output for c in raw), repr(listed.output)
    line = next(x for x in listed.stdout.splitlines() if room in x)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mred\\u202eevil\\x0alethe: FAKE LINE" in line, line
    assert not any(x.startswith("lethe: FAKE") for x in listed.stdout.splitlines())

    shown = await lethe_cli(lethe.config, "rooms", "show", room)
    assert shown.exit_code == 0, shown.output
    assert not any(c in shown.output for c in raw), repr(shown.output)
    assert text_fields(shown.stdout)["Name"].startswith("\\x1b]0;owned\\x07"), shown.stdout

    # JSON escapes by itself and round-trips the exact name.
    as_json = await lethe_cli(lethe.config, "rooms", "list", "--json")
    assert not any(c in as_json.stdout for c in raw), repr(as_json.stdout)
    assert {r["room_id"]: r for r in out_json(as_json)}[room]["name"] == hostile

    # Errors too: an unknown alias is echoed back in the one error line.
    bad = await lethe_cli(lethe.config, "rooms", "show",
                          f"#\x1b[2Jnope\u202e:{synapse.server_name}")
    assert bad.exit_code == 2, bad.output
    assert not any(c in bad.output for c in raw), repr(bad.output)
    assert "\\x1b[2Jnope\\u202e" in one_line_error(bad)


async def test_a_kicked_bot_reports_the_redactions_it_gave_up(people, lethe, caplog) -> None:
    """Kicked, the bot can redact nothing there: it drops the room's schedule, logs how
    many scheduled redactions it gave up, and `rooms list` keeps showing the room."""
    caplog.set_level(logging.INFO, logger="bot.front")
    alice, _, room = await bot_room(people, lethe, policy="after-send 1h")
    sent = [await alice.send(room, f"canary-kicked number {i}") for i in range(3)]
    await scheduled(lethe, *sent)
    status, data = await alice.api("POST", f"/rooms/{quote(room)}/kick",
                                   {"user_id": lethe.user_id, "reason": "test"})
    assert status == 200, data
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine

    async def forgotten() -> bool:
        return await engine.room(room) is None

    await eventually(forgotten, 30, what="the room's schedule dropped after the kick")
    [warning] = [r.getMessage() for r in caplog.records
                 if "gave up" in r.getMessage() and room in r.getMessage()]
    given_up = int(warning.split("gave up ")[1].split()[0])
    assert given_up >= len(sent), warning  # the bot's own notices were scheduled too

    rows = out_json(await lethe_cli(lethe.config, "rooms", "list", "--json"))
    [row] = [r for r in rows if r["room_id"] == room]
    assert row["membership"] == "leave" and row["given_up"] == given_up, row
    text = await lethe_cli(lethe.config, "rooms", "list")
    assert text.exit_code == 0, text.output
    assert "Rooms the bot left" in text.stdout, text.stdout
    line = next(x for x in text.stdout.splitlines() if room in x)
    assert f" {given_up} " in line, line
