"""Delayed redactions with the appservice bridge, against a Synapse that offers them
and has loaded the bridge's registration: each local sender's message is scheduled
as that sender (masquerading), the homeserver redacts on time while the bridge is
stopped, and the bridge, restarted, counts each once from the pushed echo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bot.cli.main import main
from bot.devtools.localsynapse import LocalSynapse
from bot.devtools.synapseconfig import delayed_redactions
from bot.engine.model import DelayState
from tests.harness import all_redacted, eventually, stays
from tests.test_bridge import BridgeHandle, BridgeServer, encrypted_room, serve_bridge
from tests.test_delayed import Watch, delayed_events, one_each, redactions_of

TIMER_S = 15


@pytest.fixture(scope="module")
def delayed_bridge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeServer]:
    server = serve_bridge(tmp_path_factory.mktemp("delayed-bridge"),
                          delayed_redactions("30s", per_user=3))
    yield server
    server.hs.stop()


@pytest.fixture(scope="module")
def synapse(delayed_bridge_server: BridgeServer) -> LocalSynapse:
    """This module's homeserver, so the shared `people` fixture makes people on it."""
    return delayed_bridge_server.hs


@pytest.fixture
async def bridge(delayed_bridge_server: BridgeServer, tmp_path: Path) -> AsyncIterator[Any]:
    handle = BridgeHandle(delayed_bridge_server.config(
        tmp_path / "bridge", default_policy={"mode": "after_send", "timer": f"{TIMER_S}s"}))
    await handle.start()
    yield handle
    await handle.stop()


async def test_the_homeserver_redacts_as_each_sender_while_the_bridge_is_stopped(
    bridge: BridgeHandle, people: Any, delayed_bridge_server: BridgeServer,
) -> None:
    alice, (bob,), room = await encrypted_room(people, "bob")
    carol = await people("carol")  # watches, sending nothing
    await alice.invite(room, carol.user_id)
    await carol.join(room)
    watch = Watch(carol)
    sent = {alice: await alice.send(room, "canary-delayed-bridge alice"),
            bob: await bob.send(room, "canary-delayed-bridge bob")}
    await bridge.tracked(*sent.values())
    assert bridge.bridge is not None and bridge.bridge.engine is not None
    engine = bridge.bridge.engine

    async def armed() -> bool:
        delays = await engine._store.delays_of(sent.values())
        return all(d.state is DelayState.ARMED for d in delays.values()) and len(delays) == 2

    await eventually(armed, 10, what="both armed")
    # Each is held by its own sender's account: it needs no power, and they see it.
    for person, event_id in sent.items():
        held = await delayed_events(delayed_bridge_server.hs, person.token)
        assert [e["content"]["redacts"] for e in held] == [event_id]
    status = await engine.delayed_status()
    assert status.in_use and status.armed == 2
    await bridge.stop()
    stopped_at = time.time()

    await eventually(all_redacted(alice, room, *sent.values()), TIMER_S + 15,
                     what="redacted by the homeserver")
    for person, event_id in sent.items():
        late = await watch.late_ms(room, event_id, TIMER_S)
        assert 0 <= late < 2000, f"redacted {late} ms after its deadline"
        (redaction,) = await redactions_of(alice, room, event_id)
        assert redaction["sender"] == person.user_id
        assert redaction["origin_server_ts"] / 1000 > stopped_at

    await bridge.start()  # the homeserver pushes what happened meanwhile
    engine = bridge.bridge.engine
    assert engine is not None

    async def counted() -> bool:
        return await engine.pending_count(room) == 0

    await eventually(counted, 30, what="nothing pending after the restart")
    row = await engine.room(room)
    assert row is not None and row.redacted_count == 2
    assert engine.stats.delayed_fired == engine.stats.done == 2

    assert await stays(lambda: one_each(alice, room, list(sent.values())), 3)
    for person in sent:
        assert await delayed_events(delayed_bridge_server.hs, person.token) == []
    status_text = await bridge_cli(bridge, "status")
    assert "Delayed redactions: in use" in status_text


async def bridge_cli(handle: BridgeHandle, *args: str) -> str:
    """``lethe -c CONFIG bridge ARGS``, in a thread (it runs its own event loop)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["-c", str(handle.config.path), "bridge", *args],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout
