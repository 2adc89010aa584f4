"""Property tests of the parsers hostile input reaches first: in-room commands, raw
event JSON and receipt content. Whatever arrives, they answer with a value or their
own error (a short, clear message), never another exception. The duration and
policy-state parsers have theirs in test_policy.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.engine.model import (
    Marker,
    MemberChange,
    Message,
    PolicyEvent,
    Receipt,
    Redaction,
    RoomUpdate,
)
from bot.engine.policy import (
    MAX_DURATION_MS,
    Mode,
    Policy,
    PolicyError,
    Readers,
    format_duration,
    policy_from_beeper,
    policy_from_state,
)
from bot.front.commands import CommandError, Help, SetMirror, SetPolicy, Status, parse_command
from bot.matrix.events import MAX_TS, receipts_from_content, to_item, to_items

from .conftest import ROOM, Harness
from .test_policy import json_values, policy_like

PREFIX = "!lethe"
S = 1000
DEFAULT_CAP = 7 * 24 * 3600 * S
# A notice answering bad input says what is wrong; it does not echo a flood back.
MAX_ERROR_CHARS = 300

# --- commands ---------------------------------------------------------------------

words = st.sampled_from([
    "help", "status", "off", "after-send", "after-read", "cap", "readers", "all", "any",
    "retention", "on",
    "1s", "30s", "5m", "1h30m", "2d", "1w", "0s", "-1s", "1.5h", "999999999999999999w", "x" * 500,
]) | st.text(max_size=20)


def _command_ok(body: str) -> None:
    try:
        command = parse_command(body, PREFIX, DEFAULT_CAP)
    except CommandError as exc:
        assert str(exc), "an error without a message"
        assert len(str(exc)) <= MAX_ERROR_CHARS, str(exc)[:100]
        return
    assert isinstance(command, Help | Status | SetPolicy | SetMirror)


@settings(max_examples=500)
@given(st.lists(words, max_size=8), st.sampled_from([" ", "  ", "\t", "\n", " \u00a0 "]))
def test_commands_parse_or_raise_command_error(args: list[str], sep: str) -> None:
    _command_ok(sep.join([PREFIX, *args]))


@given(st.text())
def test_any_text_parses_or_raises_command_error(text: str) -> None:
    _command_ok(text)
    _command_ok(f"{PREFIX} {text}")


@given(st.sampled_from(["after-send", "after-read", "after-read 1h cap", "after-read 1h readers",
                        "after-read 1h bogus", "sometimes"]),
       st.text(min_size=1, max_size=10).map(lambda t: t * 500))
def test_errors_about_huge_arguments_stay_short(verb: str, junk: str) -> None:
    _command_ok(f"{PREFIX} {verb} {junk}")
    _command_ok(f"{PREFIX} {verb} {'9' * 4000}{junk[:1]}")


seconds = st.integers(min_value=1, max_value=MAX_DURATION_MS // S).map(lambda s: s * S)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    mode = draw(st.sampled_from(Mode))
    if mode is Mode.OFF:
        return Policy.off()
    timer = draw(seconds)
    if mode is Mode.AFTER_SEND:
        return Policy.after_send(timer)
    cap = draw(seconds.filter(lambda c: c >= timer))
    return Policy.after_read(timer, cap, draw(st.sampled_from(Readers)))


def _shout(draw: st.DrawFn, word: str) -> str:
    """Commands are case-insensitive: any mix of cases must parse the same."""
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c for c, f in zip(word, flips, strict=True))


@st.composite
def command_for(draw: st.DrawFn, policy: Policy, mirror: bool | None = None) -> str:
    """Some valid command text that sets exactly ``policy`` (and the mirror opt-in
    ``mirror``, None: not named)."""
    retention = [] if mirror is None else [["retention", "on" if mirror else "off"]]
    if policy.mode is Mode.OFF:
        parts = ["off", *(word for option in retention for word in option)]
    elif policy.mode is Mode.AFTER_SEND:
        assert policy.timer_ms is not None
        parts = ["after-send", format_duration(policy.timer_ms)]
        parts += [word for option in retention for word in option]
    else:
        assert policy.timer_ms is not None and policy.cap_ms is not None
        options = [["cap", format_duration(policy.cap_ms)], *retention]
        if policy.readers is not Readers.ALL or draw(st.booleans()):
            options.append(["readers", policy.readers.value])
        options = draw(st.permutations(options))
        parts = ["after-read", format_duration(policy.timer_ms)]
        parts += [word for option in options for word in option]
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\t"]), min_size=len(parts),
                         max_size=len(parts)))
    body = _shout(draw, PREFIX)
    for sep, part in zip(seps, parts, strict=True):
        body += sep + _shout(draw, part)
    return draw(st.sampled_from(["", " ", "\n"])) + body + draw(st.sampled_from(["", " \n"]))


@settings(max_examples=300)
@given(st.data())
def test_valid_commands_round_trip(data: st.DataObject) -> None:
    policy = data.draw(policies())
    mirror = data.draw(st.sampled_from([None, True, False]))
    body = data.draw(command_for(policy, mirror))
    assert parse_command(body, PREFIX, DEFAULT_CAP) == SetPolicy(policy, mirror)


@pytest.mark.parametrize(("body", "error"), [
    ("retention", "usage: !lethe retention on|off"),
    ("retention maybe", "usage: !lethe retention on|off"),
    ("retention on off", "usage: !lethe retention on|off"),
    ("after-send 1h retention", "needs a value: retention on|off"),
    ("after-send 1h retention yes", "retention must be on or off"),
    ("after-send 1h cap 1d", "unknown option 'cap'; expected retention on|off"),
    ("off readers all", "unknown option 'readers'; expected retention on|off"),
    ("after-read 1h retention on retention off", "retention given twice"),
    ("after-read 1h bogus 1", "expected cap DUR or readers all|any or retention on|off"),
])
def test_retention_option_errors(body: str, error: str) -> None:
    with pytest.raises(CommandError, match=re.escape(error)):
        parse_command(f"{PREFIX} {body}", PREFIX, DEFAULT_CAP)


def test_retention_alone_keeps_the_rule() -> None:
    assert parse_command(f"{PREFIX} Retention ON", PREFIX, DEFAULT_CAP) == SetMirror(True)
    assert parse_command(f"{PREFIX} retention off", PREFIX, DEFAULT_CAP) == SetMirror(False)


@given(seconds)
def test_after_read_without_cap_gets_the_default_cap(timer: int) -> None:
    command = parse_command(f"{PREFIX} after-read {format_duration(timer)}", PREFIX, DEFAULT_CAP)
    assert command == SetPolicy(Policy.after_read(timer, max(DEFAULT_CAP, timer)))


# --- policy state: the reason of an "ignoring this state event" notice --------------


@settings(max_examples=300)
@given(st.one_of(policy_like, json_values), st.text(min_size=1, max_size=10).map(lambda t: t * 300))
def test_policy_state_errors_stay_short(content: object, junk: str) -> None:
    """A policy event's content is anybody's with the power to send it: the reason the
    bot gives for ignoring it must not carry that content back in bulk."""
    candidates = [content]
    if isinstance(content, dict):
        candidates += [{**content, key: junk} for key in ("mode", "readers", "timer_ms", "type")]
    for candidate in candidates:
        for parse in (policy_from_state, lambda c: policy_from_beeper(c, DEFAULT_CAP)):
            try:
                parse(candidate)
            except PolicyError as exc:
                assert len(str(exc)) <= MAX_ERROR_CHARS, str(exc)[:100]


# --- raw events ---------------------------------------------------------------------

ids = st.sampled_from(["$e1", "$e2", "", "@alice:x", "!room:x"]) | st.text(max_size=6)
anything = json_values | ids
relates = st.fixed_dictionaries(
    {},
    optional={
        "rel_type": st.sampled_from(["m.replace", "m.annotation", "m.thread", "m.reference",
                                     "m.other"]) | anything,
        "event_id": ids | anything,
        "m.in_reply_to": anything,
    },
) | anything
contents = st.fixed_dictionaries(
    {},
    optional={
        "body": anything,
        "msgtype": st.sampled_from(["m.text", "m.notice", "x.unknown"]) | anything,
        "m.relates_to": relates,
        "membership": st.sampled_from(["join", "leave", "ban", "invite"]) | anything,
        "redacts": ids | anything,
        "mode": anything,
    },
) | anything
timestamps = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1_700_000_000_000, MAX_TS, MAX_TS + 1, -1, True])
    | anything
)
event_types = st.sampled_from([
    "m.room.message", "m.room.encrypted", "m.room.member", "m.room.redaction", "m.reaction",
    "chat.lethe.policy", "com.beeper.disappearing_timer", "x.unknown",
])
optional_fields = {
    "content": contents,
    "state_key": st.sampled_from(["", "@alice:x"]) | anything,
    "redacts": ids | anything,
    "unsigned": st.fixed_dictionaries({}, optional={"redacted_because": anything}) | anything,
}
# Events with every field a front needs, with odd values, and loose bags of fields.
shaped_events = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["$e1", "$e2", "$e3"]),
        "sender": st.sampled_from(["@alice:x", "@bob:x"]),
        "type": event_types,
        "origin_server_ts": timestamps,
    },
    optional=optional_fields,
)
loose_events = st.fixed_dictionaries(
    {},
    optional={
        "event_id": ids | anything,
        "sender": ids | anything,
        "type": event_types | anything,
        "origin_server_ts": timestamps,
        **optional_fields,
    },
)
raw_events = shaped_events | loose_events | anything


def _sane(item: object) -> None:
    assert isinstance(item, Message | Marker | MemberChange | PolicyEvent | Redaction), item
    if isinstance(item, Message):
        assert isinstance(item.event_id, str) and item.event_id
        assert isinstance(item.sender, str) and item.sender
        # A valid Matrix integer: anything larger cannot be stored as a due time.
        assert type(item.origin_ts) is int and 0 <= item.origin_ts <= MAX_TS
        for related in (item.thread_id, item.parent_id):
            assert related is None or (isinstance(related, str) and related)
    elif isinstance(item, Redaction):
        assert isinstance(item.target, str) and item.target
    elif isinstance(item, MemberChange):
        assert isinstance(item.user_id, str)
    elif isinstance(item, PolicyEvent):
        assert type(item.origin_ts) is int and 0 <= item.origin_ts <= MAX_TS


@settings(max_examples=500)
@given(raw_events, st.booleans())
def test_to_item_never_raises(event: object, in_timeline: bool) -> None:
    if not isinstance(event, dict):
        return  # fronts only hand over JSON objects
    item = to_item(event, in_timeline=in_timeline)
    if item is not None:
        _sane(item)


receipt_info = st.fixed_dictionaries(
    {}, optional={"ts": timestamps, "thread_id": ids | anything}
) | anything
receipt_content = st.dictionaries(
    ids | st.text(max_size=4),
    st.dictionaries(
        st.sampled_from(["m.read", "m.read.private", "x"]) | st.text(max_size=4),
        st.dictionaries(ids, receipt_info, max_size=3) | anything,
        max_size=3,
    ) | anything,
    max_size=4,
) | anything


@settings(max_examples=500)
@given(receipt_content)
def test_receipts_from_content_never_raises(content: object) -> None:
    for receipt in receipts_from_content(content):
        assert isinstance(receipt, Receipt)
        assert isinstance(receipt.user_id, str) and isinstance(receipt.event_id, str)
        assert receipt.thread_id is None or isinstance(receipt.thread_id, str)
        assert receipt.ts is None or (type(receipt.ts) is int and 0 <= receipt.ts <= MAX_TS)


def test_private_receipts_are_not_read_receipts() -> None:
    content = {"$e": {"m.read.private": {"@a:x": {"ts": 1}}, "m.read": {"@b:x": {"ts": 2}}}}
    assert receipts_from_content(content) == [Receipt("@b:x", "$e", None, 2)]


# --- end to end through the engine: hostile JSON cannot break ingestion -------------


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(raw_events, max_size=8), receipt_content)
async def test_engine_ingests_whatever_the_parsers_let_through(
    h: Harness, events: list[object], receipts: object
) -> None:
    await h.set_policy(Policy.after_send(60 * S))
    timeline = to_items([e for e in events if isinstance(e, dict)])
    await h.engine.ingest(  # type: ignore[union-attr]
        [RoomUpdate(ROOM, tuple(timeline), tuple(receipts_from_content(receipts)))]
    )
    await h.advance(61 * S)  # the scheduler survives whatever was stored
