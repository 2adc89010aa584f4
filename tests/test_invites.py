"""Joining on invite against a real Synapse: a join that fails for a while (over
federation the inviting server may be unreachable, or may not have stored its own
invite yet) is retried with backoff, and `lethe rooms list` shows it meanwhile."""

from __future__ import annotations

import json

from nio import JoinError

from tests.cli_harness import lethe_cli
from tests.harness import eventually


async def test_a_failed_join_is_retried_and_listed_until_it_succeeds(people, lethe) -> None:
    bot = await lethe.start()
    assert bot.client is not None
    alice = await people("alice")
    real_join = bot.client.join
    failures = 2

    async def flaky_join(room_id: str):  # the inviting server's race, twice
        nonlocal failures
        if failures > 0:
            failures -= 1
            return JoinError("You are not invited to this room.", "M_FORBIDDEN")
        return await real_join(room_id)

    bot.client.join = flaky_join  # type: ignore[method-assign]
    room = await alice.create_room([lethe.user_id])

    async def listed() -> bool:
        result = await lethe_cli(lethe.config, "rooms", "list", "--json")
        return any(r.get("membership") == "invite" and r["room_id"] == room
                   for r in json.loads(result.stdout))

    await eventually(listed, 30, what="the pending invite in `rooms list`")
    await alice.wait_notice(room, "Lethe is here", timeout=60)
    assert failures == 0
    result = await lethe_cli(lethe.config, "rooms", "list", "--json")
    rows = json.loads(result.stdout)
    assert [r["room_id"] for r in rows if r.get("membership") == "invite"] == []
    assert room in [r["room_id"] for r in rows]
