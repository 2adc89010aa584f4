"""`lethe bridge retention-config`: the homeserver.yaml `retention:` section matching the
bridge's default policy, read back by Synapse's own config class (the real Synapse
started from it purges: tests/test_retention_purge.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result
from synapse.config.retention import RetentionConfig

from bot.cli.main import main
from tests.test_bridge_units import minimal, write

H = 3_600_000


def _run(tmp_path: Path, default_policy: dict[str, Any] | None, *args: str) -> Result:
    bridge = {} if default_policy is None else {"default_policy": default_policy}
    config = write(tmp_path, minimal(**bridge))
    return CliRunner().invoke(main, ["-c", str(config), "bridge", "retention-config", *args])


def _synapse_reads(text: str) -> RetentionConfig:
    parsed = RetentionConfig(None)  # type: ignore[arg-type]
    parsed.read_config(yaml.safe_load(text))
    return parsed


def test_after_send_default_becomes_synapses_default_policy(tmp_path: Path) -> None:
    result = _run(tmp_path, {"mode": "after_send", "timer": "3d"})
    assert result.exit_code == 0, result.output
    synapse = _synapse_reads(result.stdout)
    assert synapse.retention_enabled is True
    assert synapse.retention_default_max_lifetime == 72 * H
    assert synapse.retention_default_min_lifetime is None
    # A tenth of the lifetime, in whole minutes.
    assert [job.interval for job in synapse.retention_purge_jobs] == [432 * 60_000]
    assert "EVERY room on this server" in result.stdout
    assert "never purges state events" in result.stdout


def test_after_read_gives_its_cap_and_interval_is_bounded(tmp_path: Path) -> None:
    result = _run(tmp_path, {"mode": "after_read", "timer": "1h", "cap": "90s"})
    assert result.exit_code == 3 and "cap must be at least" in result.output, result.output
    result = _run(tmp_path, {"mode": "after_read", "timer": "5m", "cap": "2w"})
    assert result.exit_code == 0, result.output
    synapse = _synapse_reads(result.stdout)
    assert synapse.retention_default_max_lifetime == 14 * 24 * H
    assert [job.interval for job in synapse.retention_purge_jobs] == [24 * H]  # at most a day
    assert "the cap is what it gets" in result.stdout
    short = _synapse_reads(_run(tmp_path, {"mode": "after_send", "timer": "90s"}).stdout)
    assert [job.interval for job in short.retention_purge_jobs] == [60_000]  # at least 1m
    chosen = _run(tmp_path, {"mode": "after_send", "timer": "1h30m"}, "--interval", "1h30m")
    assert chosen.exit_code == 0, chosen.output
    assert "max_lifetime: 90m" in chosen.stdout
    assert [job.interval for job in _synapse_reads(chosen.stdout).retention_purge_jobs] == \
        [90 * 60_000]


def test_nothing_to_print_without_a_default_or_with_a_bad_interval(tmp_path: Path) -> None:
    for default in (None, {"mode": "off"}):
        result = _run(tmp_path, default)
        assert result.exit_code == 3, result.output
        assert "bridge.default_policy is off" in result.output
        assert "retention:" not in result.stdout
    bad = _run(tmp_path, {"mode": "after_send", "timer": "1d"}, "--interval", "often")
    assert bad.exit_code == 2 and "--interval" in bad.output
    assert "Traceback" not in bad.output
