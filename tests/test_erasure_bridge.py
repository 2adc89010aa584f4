"""`lethe audit ROOM --erasure --bridge`: the bridge keeps its own erasure ledger in
its own database, and the audit reads it with the bridge's config."""

from __future__ import annotations

from typing import Any

from tests.cli_harness import lethe_cli, one_line_error, out_json
from tests.erasure_harness import admin_token_file, stored_event, with_erasure
from tests.harness import all_redacted, eventually
from tests.test_bridge import (  # noqa: F401  (fixtures)
    BridgeServer,
    bridge_server,
    bridges,
    encrypted_room,
    synapse,
)


async def test_the_bridge_s_ledger_is_audited(
    bridge_server: BridgeServer, bridges, people, tmp_path,  # noqa: F811  (imported fixtures)
) -> None:
    handle = await bridges(default_policy={"mode": "after_send", "timer": "2s"})
    alice, (bob,), room = await encrypted_room(people, "bob")
    sent = [await alice.send(room, "expires by the bridge"), await bob.send(room, "mine too")]
    await eventually(all_redacted(alice, room, *sent), 30, what="both redacted by the bridge")
    config: Any = handle.config  # lethe_cli needs only its path

    # The bot's database is not the bridge's: without --bridge there is no bot config.
    no_bot = await lethe_cli(config, "audit", room, "--erasure")
    assert no_bot.exit_code == 3 and "bot" in one_line_error(no_bot)

    token, token_path = admin_token_file(bridge_server.hs, tmp_path / "secrets")
    with_erasure(config.path, admin_token_file=token_path, max_held="1h")
    report: dict[str, Any] = {}

    async def in_ledger() -> bool:
        result = await lethe_cli(config, "audit", room, "--erasure", "--bridge", "--json")
        report.clear()
        report.update(out_json(result))  # within erasure.max_held (1h): exit 0
        return set(sent) <= {e["event_id"] for e in report["held_events"]}

    await eventually(in_ledger, 20, interval=0.3, what="both in the bridge's ledger")
    assert report["ledger"] == "bridge" and report["max_held_ms"] == 3_600_000
    for event_id in sent:
        assert (await stored_event(bridge_server.hs, token, event_id))[0] == 200
    strict = await lethe_cli(config, "audit", room, "--erasure", "--bridge", "--max-held", "0")
    assert strict.exit_code == 1 and "NOT ERASED" in strict.stdout
    unknown = await lethe_cli(config, "audit", "!nowhere:localhost", "--erasure", "--bridge")
    assert unknown.exit_code == 2 and "no record of it" in one_line_error(unknown)
