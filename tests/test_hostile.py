"""Hostile and malformed input against the running bot, on the real Synapse: events of
every wrong shape, floods in commands, receipts for events that do not exist, invites
from servers that are not allowed. The bot answers clearly where an answer is due,
changes nothing it should not, keeps running and keeps enforcing.

Also the security promises that need a live homeserver: a 200 from /redact for an
event that does not exist is reported as unconfirmed, and secrets stay out of error
messages and DEBUG logs when a login fails.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from bot.engine.model import EventStatus, TrackedEvent
from bot.engine.policy import Policy
from tests.harness import (
    REPO,
    BotHandle,
    Person,
    bot_room,
    clean_env,
    eventually,
    lethe_argv,
    write_bot_config,
)
from tests.test_faults import all_redacted, assert_no_secrets
from tests.test_restart_privacy import credentials

LETHE = "chat.lethe.policy"
BEEPER = "com.beeper.disappearing_timer"
# Under Synapse's 65536-byte event limit with everything around it.
HUGE = 60_000

# (what, event type, content), sent by a member without power. Synapse itself refuses,
# from its own clients, an m.room.message whose body or msgtype is missing or not a
# string, relations to events it does not know, and floats (such events could still
# come over federation: tests/unit/test_properties.py feeds every shape to the
# parsers). These it takes in the clear:
CLEAR: list[tuple[str, str, dict[str, Any]]] = [
    ("60 KB body", "m.room.message", {"msgtype": "m.text", "body": "x" * HUGE}),
    ("unknown msgtype", "m.room.message", {"msgtype": "org.example.weird", "body": "weird"}),
    ("m.relates_to is a string", "m.room.message",
     {"msgtype": "m.text", "body": "hi", "m.relates_to": "$nothing"}),
    ("relation with a numeric target", "m.room.message",
     {"msgtype": "m.text", "body": "hi", "m.relates_to": {"rel_type": "m.replace",
                                                          "event_id": 42}}),
    ("relation type is a list", "m.room.message",
     {"msgtype": "m.text", "body": "hi", "m.relates_to": {"rel_type": ["m.thread"],
                                                          "event_id": "$x"}}),
    ("formatting of the wrong types", "m.room.message",
     {"msgtype": "m.text", "body": "hi", "format": 5, "formatted_body": {"a": 1},
      "m.new_content": "not an object"}),
    ("sticker with a numeric body and no url", "m.sticker", {"body": 5}),
    ("reaction without a relation", "m.reaction", {}),
    ("reaction of the wrong types", "m.reaction", {"m.relates_to": {"key": 7,
                                                                    "event_id": ["$x"]}}),
    ("encrypted event that is not", "m.room.encrypted", {"algorithm": 5, "ciphertext": {}}),
    ("encrypted event without fields", "m.room.encrypted", {}),
    ("unknown event type", "org.example.custom", {"anything": [1, 2, {"x": None}]}),
    ("command as a notice", "m.room.message", {"msgtype": "m.notice", "body": "!lethe off"}),
    ("command with a flood of options", "m.room.message",
     {"msgtype": "m.text", "body": "!lethe after-read 1h " + "cap 1s " * 5000}),
]
# Inside encryption the homeserver sees none of it: everything the bot must survive.
SEALED: list[tuple[str, str, dict[str, Any]]] = [
    ("body is a number", "m.room.message", {"msgtype": "m.text", "body": 12345}),
    ("body is a list", "m.room.message", {"msgtype": "m.text", "body": ["!lethe", "off"]}),
    ("body is a command in a list", "m.room.message", {"msgtype": "m.text",
                                                       "body": {"!lethe": "off"}}),
    ("empty content", "m.room.message", {}),
    ("no msgtype", "m.room.message", {"body": "!lethe off"}),
    ("msgtype is a number", "m.room.message", {"msgtype": 5, "body": "!lethe off"}),
    ("a float", "m.room.message", {"msgtype": "m.text", "body": "x", "n": 1.5}),
    ("30 KB body", "m.room.message", {"msgtype": "m.text", "body": "x" * (HUGE // 2)}),
    *[item for item in CLEAR if item[0] not in ("60 KB body", "m.relates_to is a string",
                                                 "relation with a numeric target",
                                                 "relation type is a list")],
]
# Floods as commands: each deserves one short error notice, fast.
FLOOD_DURATION = "!lethe after-send " + "9" * HUGE
FLOOD_VERB = "!lethe " + "z" * HUGE


async def _room(people, lethe: BotHandle, *, encrypted: bool) -> tuple[Person, Person, str]:
    alice = await people("alice")
    bob = await people("bob")
    room = await alice.create_room([bob.user_id, lethe.user_id], encrypted=encrypted,
                                   power={lethe.user_id: 50})
    await bob.join(room)
    if lethe.task is None:
        await lethe.start()
    await alice.wait_notice(room, "Lethe is here")
    await alice.send(room, "!lethe after-send 3s")
    await alice.wait_notice(room, "changed the retention policy: after-send 3s")
    return alice, bob, room


async def _send_raw(person: Person, room: str, event_type: str, content: Any) -> tuple[int, str]:
    status, data = await person.api(
        "PUT", f"/rooms/{quote(room)}/send/{quote(event_type)}/{secrets.token_hex(8)}", content)
    return status, str(data.get("event_id", data))


def _bot_errors(caplog: Any) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.name.startswith("bot") and r.levelno >= logging.ERROR]


async def _still_enforcing(lethe: BotHandle, alice: Person, bob: Person, room: str) -> None:
    assert lethe.task is not None and not lethe.task.done(), "the bot stopped"
    ordinary = await alice.send(room, "an ordinary message after all that")
    await eventually(lambda: bob.is_redacted(room, ordinary), 20,
                     what="an ordinary message redacted afterwards")


async def test_malformed_events_in_the_clear(people, lethe, caplog) -> None:
    """An unencrypted room, so every odd shape reaches the bot exactly as sent."""
    caplog.set_level(logging.INFO)
    alice, bob, room = await _room(people, lethe, encrypted=False)
    lethe_before = await alice.get_state(room, LETHE)
    beeper_before = await alice.get_state(room, BEEPER)

    accepted: dict[str, str] = {}
    refused: dict[str, int] = {}
    for what, event_type, content in CLEAR:
        status, event_id = await _send_raw(bob, room, event_type, content)
        if status == 200:
            accepted[what] = event_id
        else:
            refused[what] = status
    assert refused == {}, refused
    # State of a type nobody knows, and receipts for events that do not exist.
    assert await alice.put_state(room, "org.example.state", {"x": [None, 1]}) == 200
    for event_id in ("$does-not-exist", "$" + "A" * 43):
        status, data = await bob.api(
            "POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(event_id)}", {})
        assert status == 200, data
    status, _ = await bob.api("POST", f"/rooms/{quote(room)}/receipt/m.read/"
                                      f"{quote(accepted['unknown msgtype'])}",
                              {"thread_id": "$not-a-thread-root"})
    assert status in (200, 400)

    # Floods as commands get one short, clear answer each (and quickly: parsing a long
    # duration used to take a minute). alice sends them: bob, who may not change the
    # policy, already had his two replies in a row (test_continuity.py, the flood test).
    for body, needle in ((FLOOD_DURATION, "duration"), (FLOOD_VERB, "unknown command")):
        status, event_id = await _send_raw(alice, room, "m.room.message",
                                           {"msgtype": "m.text", "body": body})
        assert status == 200, event_id
        accepted[body[:20]] = event_id
        answer = await alice.wait_notice(room, needle)
        assert alice.user_id in answer and len(answer) < 400, answer[:500]

    await _still_enforcing(lethe, alice, bob, room)
    # Every one of them is a timeline event under the policy: all redacted.
    await eventually(lambda: all_redacted(alice, room, list(accepted.values())), 30,
                     what="the malformed events redacted like any other")
    assert await alice.get_state(room, LETHE) == lethe_before
    assert await alice.get_state(room, BEEPER) == beeper_before
    assert not any("changed the retention policy: off" in t for t in await alice.notices(room))
    assert _bot_errors(caplog) == []


async def test_malformed_events_inside_encryption(people, lethe, caplog) -> None:
    """The same shapes sealed in Megolm: the bot decrypts them and must cope too."""
    caplog.set_level(logging.INFO)
    alice, bob, room = await _room(people, lethe, encrypted=True)
    lethe_before = await alice.get_state(room, LETHE)
    sent = []
    for _, event_type, content in SEALED:
        sent.append(await bob.send_event(room, event_type, content))
    await _still_enforcing(lethe, alice, bob, room)
    await eventually(lambda: all_redacted(alice, room, sent), 30,
                     what="the malformed encrypted events redacted like any other")
    assert await alice.get_state(room, LETHE) == lethe_before
    assert _bot_errors(caplog) == []


async def test_invite_from_a_server_that_is_not_allowed(people, synapse, tmp_path,
                                                        caplog) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    alice = await people("alice")
    handle = BotHandle(write_bot_config(synapse, tmp_path / "bot",
                                        invites={"allow": ["@*:trusted.example"]}))
    try:
        await handle.start()
        bot = handle.user_id
        room = await alice.create_room([bot], power={bot: 50})

        async def refused() -> bool:
            _, state = await alice.api(
                "GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(bot)}")
            return state.get("membership") == "leave"

        await eventually(refused, 20, what="the invite from a server not allowed rejected")
        assert not await alice.notices(room)
        assert handle.bot is not None and handle.bot.engine is not None
        assert await handle.bot.engine.room(room) is None, "a refused room was recorded"
        assert any("refusing invite" in r.getMessage() and alice.user_id in r.getMessage()
                   for r in caplog.records)
        assert handle.task is not None and not handle.task.done()
    finally:
        await handle.stop()


# --- security ----------------------------------------------------------------------


async def test_redaction_of_an_unknown_event_is_unconfirmed_not_done(people, lethe,
                                                                     caplog) -> None:
    """Synapse answers 200 to a moderator's /redact for an event id it does not know;
    only the fetch afterwards tells the truth."""
    caplog.set_level(logging.INFO, logger="bot")
    alice, _, room = await bot_room(people, lethe, policy="after-send 3s")
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine
    bogus = "$" + secrets.token_urlsafe(32)[:43]  # well formed, never sent
    now = engine._clock.now_ms()
    async with engine._store.transaction() as tx:
        await tx.insert_events([TrackedEvent(
            bogus, room, alice.user_id, await engine._store.max_seq(), now - 5000, None, None,
            Policy.after_send(1000), None, now)])
    engine._scheduler.wake()

    async def failed() -> bool:
        rows = {p.event_id: p for p in await engine._store.pending(room)}
        return bogus in rows and rows[bogus].status == EventStatus.FAILED

    await eventually(failed, 20, what="the bogus event marked failed")
    row = await engine.room(room)
    assert row is not None and row.failed_count == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"giving up on {bogus}" in logged and "unconfirmed" in logged
    assert f"redacted {bogus}" not in logged
    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "unconfirmed failures: 1")
    assert "Enforcement: yes" in status, status


def _run_cli(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lethe_argv("-c", str(config_path), "run"), capture_output=True, text=True, timeout=120,
        cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL,
    )


async def test_failed_logins_keep_secrets_out_of_messages_and_logs(people, synapse,
                                                                   tmp_path) -> None:
    """Logging at DEBUG (the test config): a refused saved token and a wrong password
    end in one clear line, exit code 4, and neither secret in any output."""
    # A saved login that the homeserver has since revoked.
    config = write_bot_config(synapse, tmp_path / "revoked")
    handle = BotHandle(config)
    await handle.start()
    await handle.stop()
    token = credentials(config)["access_token"]
    async with aiohttp.ClientSession() as session, session.post(
        f"{synapse.base_url}/_matrix/client/v3/logout",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
    result = _run_cli(config.path)
    assert result.returncode == 4, result
    output = result.stdout + result.stderr
    assert "refused" in output and "lethe login" in output, output[-1000:]
    assert "Traceback" not in output
    assert_no_secrets(output, config)

    # A first login with the wrong password.
    wrong = write_bot_config(synapse, tmp_path / "wrong")
    raw = yaml.safe_load(wrong.path.read_text())
    raw["bot"]["password"] = "wrong-" + secrets.token_hex(8)
    wrong.path.write_text(yaml.safe_dump(raw))
    result = _run_cli(wrong.path)
    assert result.returncode == 4, result
    output = result.stdout + result.stderr
    assert "login" in output and wrong.bot.user_id in output, output[-1000:]
    assert raw["bot"]["password"] not in output and wrong.e2ee.pickle_key not in output
    assert "Traceback" not in output
    assert not wrong.credentials_path.exists()
