"""What the mirror buys where the homeserver enables its retention feature: Synapse, set
up with the section `lethe bridge retention-config` prints (its purge job every second),
purges an expired event of a mirrored room from its database, hides it from clients
first, and keeps the room's newest expired event; Lethe meanwhile redacts on time and
confirms every redaction although Synapse hides the expired events from it too."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from bot.devtools.localsynapse import LocalSynapse, synapse_available
from bot.engine.policy import Policy
from bot.matrix.api import MatrixHttp
from bridge.synapseretention import retention_section
from tests.harness import BotHandle, Person, eventually, stays, unique, write_bot_config

RETENTION = "m.room.retention"


@pytest.fixture(scope="module")
def retention_hs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    if not synapse_available():
        pytest.fail("matrix-synapse is not installed: pip install -e '.[test]'")
    # A server-wide default of one hour (no room here lives that long) and the shortest
    # purge interval Synapse's config takes in its own units.
    section = yaml.safe_load(retention_section(Policy.after_send(3_600_000), 1000))
    assert section["retention"]["purge_jobs"] == [{"interval": "1s"}]
    hs = LocalSynapse(tmp_path_factory.mktemp("retention"), extra_config=section)
    hs.start()
    yield hs
    hs.stop()


async def test_synapse_purges_what_the_mirror_says(retention_hs: LocalSynapse,
                                                  tmp_path: Path) -> None:
    hs = retention_hs
    alice = Person(hs, unique("alice"), tmp_path / "alice")
    await alice.start()
    lethe = BotHandle(write_bot_config(hs, tmp_path / "bot"))
    admin = MatrixHttp(hs.base_url, hs.register(unique("admin"), admin=True).access_token)

    async def stored(event_id: str) -> int:
        """The status of the admin API's fetch_event: 200 while Synapse stores the
        event, 404 once it is purged."""
        return (await admin.admin_fetch_event(event_id)).status

    async def purged(event_id: str) -> bool:
        return await stored(event_id) == 404

    async def hidden(event_id: str) -> bool:
        status, _ = await alice.api("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
        return status == 404

    try:
        room = await alice.create_room([lethe.user_id], power={lethe.user_id: 50})
        await lethe.start()
        await alice.wait_notice(room, "Lethe is here")
        await alice.send(room, "!lethe after-send 2s retention on")
        await alice.wait_notice(room, "changed the retention policy: after-send 2s")
        assert await alice.get_state(room, RETENTION) == {"max_lifetime": 2000}

        # Lethe redacts on time and confirms by the echo, although Synapse hides an
        # expired event from every client, the bot included, from the same moment.
        first = await alice.send(room, "canary-retention-purge first")
        assert lethe.bot is not None and lethe.bot.engine is not None
        engine = lethe.bot.engine

        async def all_redacted() -> bool:
            status = await engine.status(room)
            # The message (the policy notice is pinned, so held out of expiry).
            return status is not None and status.pending == 0 and status.redacted >= 1

        await eventually(all_redacted, 20, what="the message redacted")
        status = await engine.status(room)
        assert status is not None and status.failed == 0, status
        await lethe.stop()

        # Synapse purges the expired message from its database at a purge job ...
        newest = await alice.send(room, "canary-retention-purge newest")
        await eventually(lambda: purged(first), 20, what="Synapse purging the expired message")
        # ... but keeps the newest expired event (the room's latest here), hidden from
        # clients, for as long as no newer event expires.
        await eventually(lambda: hidden(newest), 10,
                         what="Synapse hiding the expired newest message")
        assert await stored(newest) == 200
        assert await stays(lambda: _not(purged(newest)), 3), \
            "Synapse purged the room's latest event"
        newer = await alice.send(room, "canary-retention-purge newer")
        await eventually(lambda: purged(newest), 20,
                         what="the once newest message purged after a newer one expired")
        assert await stored(newer) == 200
        assert await alice.get_state(room, RETENTION) == {"max_lifetime": 2000}
    finally:
        await lethe.stop()
        await admin.close()
        await alice.close()


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
