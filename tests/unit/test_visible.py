"""The pure parts of the visible timer: the bot's suffix in a topic (a member's text
never touched), the pinned list with the bot's pin replaced (members' pins kept), the
timers offered in com.beeper.room_features, what status says, and the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.engine.policy import Policy
from bot.engine.power import PowerState
from bot.matrix.pins import UNPINNED, Pins, pin_summary, repinned
from bot.matrix.roomfeatures import (
    DEFAULT_TIMERS_MS,
    accepted_timers,
    disappearing_timer,
    with_timers,
)
from bot.matrix.topic import MARK, topic_content, with_rule, without_rule

BOT = "@bot:x"


def test_the_topic_suffix_is_added_replaced_and_removed_alone() -> None:
    assert with_rule("", "after-send 1h") == f"{MARK}after-send 1h"
    added = with_rule("Planning · room", "after-send 1h")
    assert added == f"Planning · room · {MARK}after-send 1h"
    assert with_rule(added, "after-send 2h") == f"Planning · room · {MARK}after-send 2h"
    assert with_rule(added, None) == "Planning · room"
    assert without_rule("Planning") == "Planning"
    # Rich topics: every text, HTML escaped where it is HTML.
    content = {"topic": "Plan", "m.topic": {"m.text": [
        {"body": "<b>Plan</b>", "mimetype": "text/html"}, {"body": "Plan"}]}, "x": 1}
    out = topic_content(content, "a < b")
    assert out["topic"] == f"Plan · {MARK}a < b" and out["x"] == 1
    assert out["m.topic"]["m.text"] == [
        {"body": f"<b>Plan</b> · {MARK}a &lt; b", "mimetype": "text/html"},
        {"body": f"Plan · {MARK}a < b"}]
    assert topic_content(out, None)["m.topic"] == content["m.topic"]


def test_repinned_keeps_members_pins_in_place() -> None:
    assert repinned(("$a", "$old", "$b"), {"$old"}, "$new") == ["$a", "$b", "$new"]
    assert repinned(("$a", "$old"), {"$old", "$gone"}, None) == ["$a"]
    assert repinned((), set(), "$new") == ["$new"]
    assert repinned(("$new",), set(), "$new") == ["$new"]


def test_accepted_timers_take_a_range_and_the_rooms_own() -> None:
    assert accepted_timers() == DEFAULT_TIMERS_MS
    assert accepted_timers(60_000, 86_400_000) == (300_000, 3_600_000, 28_800_000, 86_400_000)
    assert 90_000 in accepted_timers(current=Policy.after_send(90_000))
    assert accepted_timers(100_000, current=Policy.after_send(90_000))[0] == 300_000
    assert disappearing_timer((1, 2), off_allowed=False) == {
        "types": ["after_read", "after_send"], "timers": [1, 2], "omit_empty_timer": True}
    bridge = {"edit": 1, "disappearing_timer": {"types": []}}
    assert with_timers(bridge, {"types": [""]}) == {"edit": 1,
                                                    "disappearing_timer": {"types": [""]}}
    assert with_timers(None, {})["reply"] == 2


def test_status_says_why_the_notice_is_not_pinned() -> None:
    may = PowerState.from_state(None, {"users": {BOT: 50}})
    may_not = PowerState.from_state(None, {"users": {BOT: 50},
                                           "events": {"m.room.pinned_events": 100}})
    assert pin_summary(True, Pins(("$n",)), {"$n"}, None, may, BOT).startswith("yes ($n")
    assert pin_summary(True, Pins(()), set(), None, may_not, BOT) == (
        "NO: I cannot pin the policy notice: my power level is 50 and "
        "m.room.pinned_events needs 100")
    assert pin_summary(True, Pins(()), {"$n"}, None, may, BOT).startswith(
        "no: a member unpinned it")
    assert pin_summary(True, Pins(()), set(), UNPINNED, may, BOT) == f"no: {UNPINNED}"
    assert pin_summary(True, Pins(("$n",)), {"$n"}, "HTTP 403", may, BOT) == "NO: HTTP 403"
    assert pin_summary(False, Pins(()), set(), None, may, BOT) == "nothing (the policy is off)"
    assert pin_summary(True, Pins(problem="down"), set(), None, may, BOT).startswith("unknown")


def _config(tmp_path: Path, notices: object) -> Path:
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump({
        "homeserver": {"url": "https://matrix.example.org"},
        "bot": {"user_id": "@lethe:example.org", "password": "hunter2-hunter2"},
        "e2ee": {"pickle_key": "0123456789abcdef0123456789abcdef"},
        "notices": notices}))
    return path


def test_notices_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, {"topic": True}), env={})
    assert (config.notices.pin, config.notices.room_features, config.notices.topic) == (
        True, True, True)
    assert load_config(_config(tmp_path, None), env={}).notices.topic is False
    with pytest.raises(ConfigError, match=r"notices\.topic: must be true or false"):
        load_config(_config(tmp_path, {"topic": "yes"}), env={})
    with pytest.raises(ConfigError, match=r"notices\.pinned: unknown key"):
        load_config(_config(tmp_path, {"pinned": True}), env={})
