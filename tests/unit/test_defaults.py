"""Defaults without a homeserver: the ``!lethe default`` grammar, ``policy.on_join`` in
the config, the stored content read part by part, and which default a room gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ConfigError, load_config
from bot.engine.policy import Policy, Readers
from bot.front import texts
from bot.front.commands import (
    ClearDefault,
    CommandError,
    SetDefault,
    ShowDefault,
    parse_command,
)
from bot.matrix.defaults import (
    RoomKind,
    UserDefaults,
    choose_default,
    defaults_type,
    kind_of_invite,
    parse_defaults,
)

H = 3600 * 1000
D = 24 * H
CAP = 7 * D


def parse(text: str) -> object:
    return parse_command(text, "!lethe", CAP)


# --- the command grammar ------------------------------------------------------------


def test_default_commands_parse() -> None:
    assert parse("!lethe default") == ShowDefault()
    assert parse("!lethe DEFAULT dm after-send 1d") == \
        SetDefault(RoomKind.DM, Policy.after_send(D))
    assert parse("!lethe default group after-read 1h cap 3d readers any") == \
        SetDefault(RoomKind.GROUP, Policy.after_read(H, 3 * D, Readers.ANY))
    assert parse("!lethe default group after-read 1h") == \
        SetDefault(RoomKind.GROUP, Policy.after_read(H, CAP))
    assert parse("!lethe default dm off") == SetDefault(RoomKind.DM, Policy.off())
    assert parse("!lethe default dm after-send 1d retention on") == \
        SetDefault(RoomKind.DM, Policy.after_send(D).mirrored(True))
    assert parse("!lethe default clear") == ClearDefault((RoomKind.DM, RoomKind.GROUP))
    assert parse("!lethe default clear group") == ClearDefault((RoomKind.GROUP,))


@pytest.mark.parametrize(("text", "says"), [
    ("!lethe default everything after-send 1d", "usage: !lethe default"),
    ("!lethe default dm", "usage: !lethe default"),
    ("!lethe default dm status", "usage: !lethe default"),
    ("!lethe default dm retention on", "usage: !lethe default"),
    ("!lethe default clear dm group", "usage: !lethe default"),
    ("!lethe default clear everything", "usage: !lethe default"),
    ("!lethe default dm after-send soon", "duration"),
    ("!lethe default group after-read 2h cap 1h", "at least as long as the timer"),
    ("!lethe default dm after-send 1d cap 2d", "unknown option"),
])
def test_malformed_default_commands_say_why(text: str, says: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(text)
    assert says in str(info.value)


def test_help_names_the_default_command() -> None:
    assert "!lethe default clear [dm|group]" in texts.usage("!lethe")
    assert "direct chat with me" in texts.usage("!lethe")


# --- the stored content -------------------------------------------------------------


def test_stored_defaults_round_trip_and_are_per_user() -> None:
    defaults = UserDefaults().with_default(RoomKind.DM, Policy.after_send(D)) \
        .with_default(RoomKind.GROUP, Policy.after_read(H, 3 * D))
    assert parse_defaults(defaults.to_content()) == defaults
    assert defaults.with_default(RoomKind.DM, None).to_content() == {
        "group": {"mode": "after_read", "timer_ms": H, "cap_ms": 3 * D, "readers": "all"}}
    assert UserDefaults().to_content() == {}
    assert defaults_type("@a:x") == "chat.lethe.default.@a:x" != defaults_type("@b:x")


@pytest.mark.parametrize("content", [[], "after-send 1d", None, 3])
def test_stored_content_of_the_wrong_type_is_none_with_a_problem(content: Any) -> None:
    found = parse_defaults(content)
    assert found.empty and found.problems == ("the stored defaults are not a JSON object",)


def test_one_bad_part_does_not_lose_the_other() -> None:
    found = parse_defaults({"dm": {"mode": "after_send", "timer_ms": -5},
                            "group": {"mode": "after_send", "timer_ms": H}, "extra": 1})
    assert found.dm is None and found.group == Policy.after_send(H)
    assert len(found.problems) == 1 and "dm default is unreadable" in found.problems[0]
    # Writing again drops what could not be read (and says so to its owner).
    assert found.with_default(RoomKind.DM, Policy.off()).problems == ()
    assert "Dropped: the stored dm" in texts.defaults_changed(found, found.problems)


def test_a_huge_bad_part_is_named_briefly() -> None:
    found = parse_defaults({"dm": {"mode": "x" * 100_000}})
    assert len(found.problems[0]) < 250


# --- which default a room gets --------------------------------------------------------


def test_precedence_inviter_then_creator_then_on_join() -> None:
    inviter = ("@i:x", UserDefaults(dm=Policy.after_send(H)))
    creator = ("@c:x", UserDefaults(dm=Policy.after_send(D), group=Policy.after_send(2 * H)))
    server = Policy.after_send(3 * H)
    chosen = choose_default(RoomKind.DM, [inviter, creator], server)
    assert chosen is not None and (chosen.policy, chosen.user_id) == (Policy.after_send(H), "@i:x")
    chosen = choose_default(RoomKind.GROUP, [inviter, creator], server)
    assert chosen is not None and chosen.user_id == "@c:x"
    chosen = choose_default(RoomKind.GROUP, [inviter], server)
    assert chosen is not None and (chosen.policy, chosen.user_id) == (server, None)
    assert choose_default(RoomKind.GROUP, [inviter], None) is None


def test_a_persons_off_means_no_policy_not_even_the_servers() -> None:
    chosen = choose_default(RoomKind.DM, [("@i:x", UserDefaults(dm=Policy.off()))],
                            Policy.after_send(H))
    assert chosen is not None and chosen.policy is None and chosen.user_id == "@i:x"


def test_direct_chats_are_told_by_the_invites_is_direct() -> None:
    assert kind_of_invite({"membership": "invite", "is_direct": True}) is RoomKind.DM
    for content in ({"membership": "invite"}, {"is_direct": "yes"}, None, []):
        assert kind_of_invite(content) is RoomKind.GROUP


def test_texts_name_whose_default_it_is() -> None:
    chosen = choose_default(RoomKind.DM, [("@i:x", UserDefaults(dm=Policy.after_send(H)))],
                            None)
    assert chosen is not None
    assert "the default @i:x set for new direct chats" in texts.default_applied(chosen)
    server = choose_default(RoomKind.GROUP, [], Policy.after_send(H))
    assert server is not None
    assert "this server's default" in texts.default_applied(server)
    assert "power level 50" in texts.default_not_applied(server, 50)


# --- policy.on_join -------------------------------------------------------------------


def _config(tmp_path: Path, policy: dict[str, Any]) -> Path:
    data = {
        "homeserver": {"url": "https://matrix.example.org"},
        "bot": {"user_id": "@lethe:example.org", "password": "hunter2-hunter2"},
        "e2ee": {"pickle_key": "0123456789abcdef0123456789abcdef"},
        "policy": policy,
    }
    path = tmp_path / "lethe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_on_join_is_off_unless_set(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, {}), env={}).on_join is None
    assert load_config(_config(tmp_path, {"on_join": {"mode": "off"}}), env={}).on_join is None
    on_join = {"mode": "after_read", "timer": "1h", "cap": "2d", "readers": "any"}
    assert load_config(_config(tmp_path, {"on_join": on_join}), env={}).on_join == \
        Policy.after_read(H, 2 * D, Readers.ANY)
    assert load_config(_config(tmp_path, {"default_cap": "1d", "on_join": {
        "mode": "after_read", "timer": "1h"}}), env={}).on_join == Policy.after_read(H, D)


@pytest.mark.parametrize(("on_join", "key"), [
    ("after-send 1d", "policy.on_join: must be a mapping"),
    ({"mode": "sometimes"}, "policy.on_join.mode"),
    ({"mode": "after_send"}, "policy.on_join.timer: is required"),
    ({"mode": "after_send", "timer": "soon"}, "policy.on_join.timer"),
    ({"mode": "after_send", "timer": "1d", "ttl": 1}, "policy.on_join.ttl: unknown key"),
    ({"mode": "after_send", "timer": "1d", "cap": "2d"}, "apply only to after_read"),
    ({"mode": "off", "timer": "1d"}, "an off policy has no timer"),
    ({"mode": "after_read", "timer": "2h", "cap": "1h"}, "at least as long"),
    ({"mode": "after_read", "timer": "1h", "readers": "some"}, "policy.on_join.readers"),
])
def test_a_bad_on_join_names_the_key(tmp_path: Path, on_join: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, {"on_join": on_join}), env={})
    assert key in str(info.value) and str(tmp_path) in str(info.value)
