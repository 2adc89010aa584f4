"""Proof that the server's copy is gone, against a real Synapse with an admin user:
`lethe audit ROOM --erasure` reports the originals of what Lethe redacted as held
(Synapse keeps them for redaction_retention_period), then as purged after `lethe
purge --hard`; the hard purge dry-runs, asks, and never leaves an event Lethe still
schedules to end as an unconfirmed failure; no output ever shows message content."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from bot.config import load_config
from tests.cli_harness import lethe_cli, one_line_error, out_json, scheduled
from tests.erasure_harness import admin_token_file, on_terminal, stored_event, with_erasure
from tests.harness import Person, all_redacted, bot_room, eventually


async def test_erasure_audit_held_then_purged_and_never_content(
        people, lethe, synapse, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    marker = f"canary-erasure-{secrets.token_hex(6)}"
    # Unencrypted: the homeserver stores the text itself, so any output showing content
    # would show the marker.
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s",
                                         encrypted=False)
    sent = [await alice.send(room, f"{marker} one"), await bob.send(room, f"{marker} two")]
    await eventually(all_redacted(alice, room, *sent), 30, what="both expired by Lethe")
    outputs: list[str] = []

    async def cli(config: Any, *args: str, input: str | None = None) -> Any:
        result = await lethe_cli(config, *args, input=input)
        outputs.append(result.output)
        return result

    # Without a token: a setup error naming both ways to give one.
    no_token = await cli(lethe.config, "audit", room, "--erasure")
    assert no_token.exit_code == 3, no_token.output
    error = one_line_error(no_token)
    assert "LETHE_ADMIN_TOKEN" in error and "erasure.admin_token_file" in error

    token, token_path = admin_token_file(synapse, tmp_path / "secrets")
    with_erasure(lethe.config.path, admin_token_file=token_path)
    config = load_config(lethe.config.path)
    # The homeserver still stores the originals (7 days by default), text and all.
    for event_id in sent:
        status, event = await stored_event(synapse, token, event_id)
        assert status == 200 and marker in event["content"]["body"]

    report: dict[str, Any] = {}

    async def in_ledger() -> bool:
        result = await cli(config, "audit", room, "--erasure", "--max-held", "0s", "--json")
        report.clear()
        report.update(json.loads(result.stdout))
        return set(sent) <= {e["event_id"] for e in report["held_events"]}

    # (The bot's notice of the policy change expired too: it is in the ledger as well.)
    await eventually(in_ledger, 20, interval=0.3, what="both in Lethe's erasure ledger")
    strict = await cli(config, "audit", room, "--erasure", "--max-held", "0s", "--json")
    assert strict.exit_code == 1, strict.output
    held = report["held"]
    assert held == report["checked"] >= 2 and report["erased"] == report["purged"] == 0
    assert set(sent) <= {e["event_id"] for e in report["past_bound"]}
    assert report["clean"] is False and report["held_since"] is not None
    assert report["held_by_age"] == {"under an hour": held}
    default = await cli(config, "audit", room, "--erasure")  # erasure.max_held: 7d
    assert default.exit_code == 0, default.output
    assert f"held:   {held} original(s) still stored" in default.stdout
    assert "Within the bound" in default.stdout
    text = await cli(config, "audit", room, "--erasure", "--max-held", "0s")
    assert text.exit_code == 1 and f"NOT ERASED: {held} event(s)" in text.stdout
    assert all(e in text.stdout for e in sent)

    # A dry run of the hard purge counts, and changes nothing.
    await alice.send(room, "the latest event, which a purge never removes")
    dry = await cli(config, "purge", room, "--older-than", "1s", "--hard", "--dry-run",
                    "--json")
    plan = out_json(dry)
    assert plan["dry_run"] is True and plan["matched"] >= 2 and "purged" not in plan
    assert any("state event" in line for line in plan["synapse_keeps"])
    for event_id in sent:
        assert (await stored_event(synapse, token, event_id))[0] == 200
    # Not on a terminal and no --yes: refused before anything happens.
    unasked = await cli(config, "purge", room, "--older-than", "1s", "--hard")
    assert unasked.exit_code == 2 and "--yes" in one_line_error(unasked)
    for event_id in sent:
        assert (await stored_event(synapse, token, event_id))[0] == 200

    done = await cli(config, "purge", room, "--older-than", "1s", "--hard", "--yes", "--json")
    result = out_json(done)
    assert result["status"] == "complete" and result["held_back_before"] is None
    assert result["purged"] >= 2 and result["purged"] + len(result["kept"]) == result["matched"]
    for event_id in sent:
        assert (await stored_event(synapse, token, event_id))[0] == 404
    after = out_json(await cli(config, "audit", room, "--erasure", "--max-held", "0s",
                               "--json"))
    assert (after["purged"], after["held"], after["clean"]) == (held, 0, True)
    text_after = await cli(config, "audit", room, "--erasure", "--max-held", "0s")
    assert text_after.exit_code == 0 and f"purged: {held}" in text_after.stdout

    assert lethe.bot is not None and lethe.bot.engine is not None
    status = await lethe.bot.engine.status(room)
    assert status is not None and status.failed == 0
    # Lethe's own log (the people's nio clients log whole syncs at DEBUG).
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.split(".")[0] in ("bot", "bridge", "lethe"))
    assert "redacted" in logged  # the bot did log at DEBUG meanwhile
    for output in [*outputs, logged]:
        assert marker not in output and token not in output
    assert marker.encode() not in lethe.config.database.path.read_bytes()


async def test_hard_purge_never_leaves_a_scheduled_event_to_fail(
        people, lethe, synapse, tmp_path) -> None:
    """Events Lethe still schedules (after-send 1h) are purged once the running bot has
    let go of them; with the bot stopped the purge stops before them instead, and after
    a restart a second purge takes them. No redaction ends as a failure."""
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 1h")
    early = [await alice.send(room, "scheduled for an hour"), await bob.send(room, "me too")]
    await scheduled(lethe, *early)
    token, token_path = admin_token_file(synapse, tmp_path / "secrets")
    with_erasure(lethe.config.path, admin_token_file=token_path)
    config = load_config(lethe.config.path)
    assert lethe.bot is not None and lethe.bot.engine is not None
    engine = lethe.bot.engine

    async def old_enough(*events: str) -> bool:
        plan = out_json(await lethe_cli(config, "purge", room, "--older-than", "1s", "--hard",
                                        "--dry-run", "--json"))
        return plan["tracked"] >= len(events)

    await eventually(lambda: old_enough(*early), 20, interval=0.3, what="1 s old")
    done = out_json(await lethe_cli(config, "purge", room, "--older-than", "1s", "--hard",
                                    "--yes", "--json"))
    assert done["tracked"] == 0 and done["held_back_before"] is None, done
    # The sweep's redactions come after the cutoff: the purge stops at the first of them.
    assert done["redacted"] >= 2 and done["kept"] == [] and done["purged"] == done["matched"]
    for event_id in early:
        assert (await stored_event(synapse, token, event_id))[0] == 404
    assert await engine.tracked(early) == set()

    late = await alice.send(room, "scheduled, and the bot is stopped")
    later = await alice.send(room, "scheduled too")
    await scheduled(lethe, late, later)
    await lethe.stop()
    await eventually(lambda: old_enough(late, later), 20, interval=0.3, what="1 s old")
    held = await lethe_cli(config, "purge", room, "--older-than", "1s", "--hard", "--yes",
                           "--json")
    report = out_json(held)
    assert report["tracked"] >= 1 and report["held_back_before"] is not None
    assert report["held_back_before"] == late
    assert {k["event_id"]: k["why"] for k in report["kept"]} == {
        late: "held back: on Lethe's schedule", later: "held back: on Lethe's schedule"}
    assert (await stored_event(synapse, token, late))[0] == 200  # swept, not purged
    assert await alice.is_redacted(room, late)
    text = await lethe_cli(config, "purge", room, "--older-than", "1s", "--hard", "--yes")
    assert "Held back" in text.stdout and "is the bot running" in text.stdout

    await lethe.start()  # it sees the sweep's redaction and lets go of the event
    engine = lethe.bot.engine

    async def let_go() -> bool:
        return not await engine.tracked([late, later])

    await eventually(let_go, 30, what="the restarted bot letting go")
    again = out_json(await lethe_cli(config, "purge", room, "--older-than", "1s", "--hard",
                                     "--yes", "--json"))
    assert again["held_back_before"] is None
    assert (await stored_event(synapse, token, late))[0] == 404
    room_status = await engine.status(room)
    assert room_status is not None and room_status.failed == 0 and room_status.pending == 0


async def test_hard_purge_asks_on_a_terminal(people, lethe, synapse, tmp_path) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 1h")
    kept = await alice.send(room, "a 'no' keeps this")
    last = await alice.send(room, "the last one before the cutoff: Synapse keeps it")
    token, token_path = admin_token_file(synapse, tmp_path / "secrets")
    with_erasure(lethe.config.path, admin_token_file=token_path)
    await scheduled(lethe, kept, last)
    args = ["-c", str(lethe.config.path), "purge", room, "--older-than", "1s", "--hard"]
    await eventually(lambda: _older_than_a_second(alice, room, last), 10, what="1 s old")
    code, output = await _terminal(args, "n")
    assert code == 1, output
    assert "delete all" in output and "not confirmed" in output
    assert (await stored_event(synapse, token, kept))[0] == 200
    assert not await alice.is_redacted(room, kept)
    code, output = await _terminal(args, "y")
    assert code == 0, output
    assert "purged" in output and (await stored_event(synapse, token, kept))[0] == 404


async def _terminal(args: list[str], answer: str) -> tuple[int, str]:
    return await asyncio.to_thread(on_terminal, args, answer)


async def _older_than_a_second(person: Person, room: str, event_id: str) -> bool:
    event = await person.event(room, event_id)
    return time.time() * 1000 - event["origin_server_ts"] > 1500


async def test_doctor_measures_what_the_server_keeps(people, lethe, synapse, tmp_path) -> None:
    alice, _, room = await bot_room(people, lethe, policy="after-send 1s")
    gone = await alice.send(room, "expires at once")
    await eventually(all_redacted(alice, room, gone), 20, what="expired")
    before = out_json_any(await lethe_cli(lethe.config, "doctor", "--json"))
    erasure = [c for c in before["checks"] if c["name"] == "erasure"]
    assert [c["status"] for c in erasure] == ["warn"]
    assert "LETHE_ADMIN_TOKEN" in erasure[0]["detail"] and "media" in erasure[0]["detail"]
    retention = next(c for c in before["checks"] if c["name"] == "retention")
    assert "redaction_retention_period: 1h" in retention["detail"]
    assert "null keeps them forever" in retention["detail"]

    _, token_path = admin_token_file(synapse, tmp_path / "secrets")
    with_erasure(lethe.config.path, admin_token_file=token_path)

    async def measured() -> bool:
        report = out_json_any(await lethe_cli(lethe.config, "doctor", "--json"))
        details = [c["detail"] for c in report["checks"] if c["name"] == "erasure"]
        return any("still stored" in d for d in details)

    await eventually(measured, 20, interval=0.5, what="the doctor's measurement")
    report = out_json_any(await lethe_cli(lethe.config, "doctor", "--json"))
    token = [c for c in report["checks"] if c["name"] == "admin token"]
    assert token[0]["status"] == "ok" and "admin's" in token[0]["detail"]
    erasure = [c for c in report["checks"] if c["name"] == "erasure"]
    assert erasure[0]["status"] == "warn" and " held" in erasure[0]["detail"]
    assert "the server keeps them at least that long" in erasure[0]["detail"]

    # A token that is not an admin's fails the check, without showing the token.
    user = synapse.register("notadmin" + secrets.token_hex(3))
    token_path.write_text(user.access_token)
    wrong = await lethe_cli(lethe.config, "doctor", "--json")
    failed = [c for c in out_json_any(wrong)["checks"] if c["name"] == "admin token"]
    assert [c["status"] for c in failed] == ["FAIL"] and "not a homeserver admin" in \
        failed[0]["detail"]
    assert not [c for c in out_json_any(wrong)["checks"] if c["name"] == "erasure"]
    assert user.access_token not in wrong.output
    denied = await lethe_cli(lethe.config, "audit", room, "--erasure")
    assert denied.exit_code == 3 and "not a homeserver admin" in one_line_error(denied)


def out_json_any(result: Any) -> Any:
    """`doctor --json` (its exit code says whether all is well; the JSON is there anyway)."""
    return json.loads(result.stdout)
