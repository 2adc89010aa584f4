"""Delayed redactions as the homeserver speaks them (bot/matrix/delayed.py): what
/versions offers, what each answer to scheduling one means, its list; and the
config key that turns them off. The replies are Synapse 1.163's, as it sends them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.engine.delayed import ArmOutcome
from bot.matrix.api import HttpReply
from bot.matrix.delayed import arm_reply, listed, support_from_versions

BOTH = {"org.matrix.msc4140": True, "com.beeper.msc4169": True}


def test_both_features_must_be_offered() -> None:
    assert support_from_versions({"unstable_features": BOTH}).offered
    none = support_from_versions({"versions": ["v1.11"]})
    assert not none.offered
    assert "delayed events (MSC4140) nor redactions sent through /send (MSC4169)" in none.reason
    assert "max_event_delay_duration" in none.reason
    half = support_from_versions({"unstable_features": {**BOTH, "com.beeper.msc4169": False}})
    assert not half.offered and "MSC4140" not in half.reason and "MSC4169" in half.reason


@pytest.mark.parametrize(("status", "body", "retry", "outcome", "detail"), [
    (200, {"delay_id": "syd_a"}, None, ArmOutcome.ARMED, "syd_a"),
    (400, {"errcode": "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE", "error": "The requested delay "
           "(1000000000000ms) exceeds the allowed maximum (86400000ms)"}, None,
     ArmOutcome.TOO_LONG, 86_400_000),
    (429, {"errcode": "M_LIMIT_EXCEEDED", "error": "The maximum number of delayed events has "
           "been reached.", "retry_after_ms": 1983}, 1983, ArmOutcome.FULL, 1983),
    (429, {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests"}, 500,
     ArmOutcome.RATE_LIMITED, 500),
    (403, {"errcode": "M_FORBIDDEN", "error": "Sending delayed events has been disallowed"},
     None, ArmOutcome.UNSUPPORTED, None),
    (403, {"errcode": "M_FORBIDDEN", "error": "User not in room"}, None, ArmOutcome.REFUSED,
     None),
    (200, {"event_id": "$sent-at-once"}, None, ArmOutcome.UNSUPPORTED, None),
    (502, {}, None, ArmOutcome.TRANSIENT, None),
])
def test_each_answer_to_scheduling(status: int, body: dict[str, object], retry: int | None,
                                   outcome: ArmOutcome, detail: object) -> None:
    reply = arm_reply(HttpReply(status, body, retry))
    assert reply.outcome is outcome
    if outcome is ArmOutcome.ARMED:
        assert reply.delay_id == detail
    elif outcome is ArmOutcome.TOO_LONG:
        assert reply.max_delay_ms == detail
    elif detail is not None:
        assert reply.retry_after_ms == detail


def test_the_list_keeps_only_redactions_and_when_they_fire() -> None:
    body = {"delayed_events": [
        {"delay_id": "syd_1", "room_id": "!r:x", "type": "m.room.redaction", "delay_ms": 2000,
         "delayed_since_ts": 1000, "content": {"redacts": "$m", "reason": "expired"},
         "delay": 2000, "running_since": 1000},
        {"delay_id": "syd_2", "room_id": "!r:x", "type": "m.call.member", "state_key": "@a:x",
         "delay_ms": 8000, "delayed_since_ts": 1000, "content": {}},
        {"delay_id": "syd_3", "room_id": "!r:x", "type": "m.room.redaction", "content": {}},
        "junk",
    ]}
    (only,) = listed(body)
    assert (only.delay_id, only.room_id, only.target, only.reason, only.fires_at) == (
        "syd_1", "!r:x", "$m", "expired", 3000)


def _config(tmp_path: Path, delayed: object) -> Path:
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"url": "https://matrix.example.org"},
        "bot": {"user_id": "@lethe:example.org", "password": "hunter2-hunter2"},
        "e2ee": {"pickle_key": "k" * 32},
        "redaction": {"delayed": delayed},
    }))
    return path


def test_redaction_delayed_is_auto_or_off(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "auto"), env={}).delayed_redactions
    assert not load_config(_config(tmp_path, "off"), env={}).delayed_redactions
    path = tmp_path / "bare.yaml"
    path.write_text(_config(tmp_path, "x").read_text().replace("delayed: x", "delayed: off"))
    assert not load_config(path, env={}).delayed_redactions  # YAML reads a bare off as false
    with pytest.raises(ConfigError, match=r"redaction\.delayed: must be auto or off, not 'on'"):
        load_config(_config(tmp_path, "on"), env={})
