"""The Prometheus endpoint and /health of `lethe run` (``metrics.listen``), against a real
Synapse: the named series with values that follow what the bot did; health turning
503 when the scheduler stops; loopback-only configuration."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.config import ConfigError, load_config
from bot.devtools.localsynapse import find_free_port
from tests.harness import REPO, BotHandle, bot_room, eventually, lethe_argv, write_bot_config

LETHE = "chat.lethe.policy"
SERIES = (
    "lethe_events_tracked", "lethe_pending_events", "lethe_redactions",
    "lethe_redaction_lag_seconds", "lethe_rate_limited", "lethe_redaction_retries",
    "lethe_redaction_failures", "lethe_redactions_parked", "lethe_rooms",
    "lethe_sync_alive", "lethe_scheduler_alive", "lethe_redactions_echoed",
    "lethe_redaction_fetches",
)


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert set(SERIES) <= names, set(SERIES) - names
    return samples


async def health(port: int) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/health") as resp:
        return resp.status, await resp.json()


async def test_metrics_and_health(people, synapse, tmp_path) -> None:
    port = find_free_port()
    handle = BotHandle(write_bot_config(synapse, tmp_path / "bot",
                                        metrics={"listen": f"127.0.0.1:{port}"}))
    try:
        alice, (bob,), room = await bot_room(people, handle, "bob", policy="after-send 2s")
        # A second room where the bot has no power: its message is parked when due.
        weak = await alice.create_room([handle.user_id])
        await alice.wait_notice(weak, "I cannot redact")
        assert await alice.put_state(weak, LETHE, {"mode": "after_send", "timer_ms": 1000}) \
            == 200
        await alice.wait_notice(weak, "changed the retention policy: after-send 1s")
        stuck = await alice.send(weak, "nobody can redact this")
        gone = await alice.send(room, "redacted in two seconds")
        await eventually(lambda: bob.is_redacted(room, gone), 20, what="a redaction")

        got: dict = {}

        async def counted() -> bool:
            got.update(await scrape(port))
            return (got[("lethe_redaction_lag_seconds_count", ())] >= 2  # + the bot's notice
                    and got[("lethe_redactions_parked_total", ())] >= 1)

        await eventually(counted, 20, interval=0.3, what="the redactions in the metrics")
        done = got[("lethe_redactions_total", ())]
        assert done >= 2 and got[("lethe_redaction_lag_seconds_count", ())] == done
        # How each was confirmed: the first in each room is a fetched spot check.
        echoed = got[("lethe_redactions_echoed_total", ())]
        fetches = got[("lethe_redaction_fetches_total", ())]
        assert fetches >= 1 and echoed <= done - 1, (echoed, fetches, done)
        assert got[("lethe_redaction_lag_seconds_bucket", (("le", "+Inf"),))] == done
        # The two messages and the weak room's notices (the other room's policy notice is
        # pinned, so held out of expiry).
        assert got[("lethe_events_tracked_total", ())] >= 3
        assert got[("lethe_pending_events", (("state", "parked"),))] >= 1
        assert got[("lethe_pending_events", (("state", "failed"),))] == 0
        assert got[("lethe_rooms", (("enforceable", "yes"), ("policy", "after_send")))] == 1
        assert got[("lethe_rooms", (("enforceable", "no"), ("policy", "after_send")))] == 1
        assert got[("lethe_redaction_failures_total", ())] == 0
        assert got[("lethe_sync_alive", ())] == 1 and got[("lethe_scheduler_alive", ())] == 1
        assert not await alice.is_redacted(weak, stuck)

        status, body = await health(port)
        assert (status, body) == (200, {"sync_alive": True, "scheduler_alive": True,
                                          "role": "active"})
        assert handle.bot is not None and handle.bot.engine is not None
        await handle.bot.engine._scheduler.stop()
        status, body = await health(port)
        assert (status, body) == (503, {"sync_alive": True, "scheduler_alive": False,
                                          "role": "active"})
        assert (await scrape(port))[("lethe_scheduler_alive", ())] == 0
    finally:
        await handle.stop()
    # Stopped with the bot: nothing listens any more.
    with pytest.raises(aiohttp.ClientConnectionError):
        await health(port)


def _config(tmp_path: Path, listen: object) -> Path:
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"url": "http://127.0.0.1:1"},
        "bot": {"user_id": "@lethe:localhost"},
        "e2ee": {"pickle_key": "0123456789abcdef0123456789abcdef"},
        "metrics": {"listen": listen},
    }))
    return path


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:9464",
                                    "127.0.0.2:1"])
def test_loopback_listen_addresses_are_accepted(tmp_path: Path, listen: str) -> None:
    metrics = load_config(_config(tmp_path, listen), env={}).metrics
    assert metrics is not None and metrics.listen.endswith(listen.rsplit(":", 1)[1])


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "192.168.1.10:9464", "[::]:9464",
                                    "metrics.example.org:9464"])
def test_non_loopback_addresses_are_refused(tmp_path: Path, listen: str) -> None:
    path = _config(tmp_path, listen)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message and "metrics.listen" in message and "loopback" in message


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000",
                                    "127.0.0.1:http", 9464])
def test_malformed_listen_addresses_are_refused(tmp_path: Path, listen: object) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        load_config(_config(tmp_path, listen), env={})


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    path = _config(tmp_path, None)
    assert load_config(path, env={}).metrics is None


def test_run_exits_3_when_the_metrics_port_is_taken(synapse, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_bot_config(synapse, tmp_path / "bot",
                                  metrics={"listen": f"127.0.0.1:{port}"})
        result = subprocess.run(
            lethe_argv("-c", str(config.path), "run"),
            capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lethe:")]
    assert len(errors) == 1 and "metrics.listen" in errors[0] and str(port) in errors[0]
    assert "Traceback" not in result.stderr
