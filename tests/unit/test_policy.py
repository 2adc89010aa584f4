"""Durations, the Policy value object, the two state formats and their precedence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    MAX_DURATION_MS,
    POLICY_EVENT_TYPE,
    Mode,
    Policy,
    PolicyError,
    Readers,
    StatePolicy,
    format_duration,
    parse_duration,
    policy_from_beeper,
    policy_from_state,
    resolve_policy,
)

S = 1000
M = 60 * S
H = 60 * M
D = 24 * H
W = 7 * D
DEFAULT_CAP = 7 * D

# --- durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30 * S),
        ("1s", S),
        ("5m", 5 * M),
        ("1h30m", H + 30 * M),
        ("2d", 2 * D),
        ("1w", W),
        ("1w2d3h4m5s", W + 2 * D + 3 * H + 4 * M + 5 * S),
        ("90m", 90 * M),
        ("0h1s", S),
        ("  5m\t", 5 * M),
        ("\n1H30M ", H + 30 * M),
        ("2D", 2 * D),
    ],
)
def test_parse_duration_valid(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "0s",
        "0m0s",
        "10",
        "abc",
        "1m1h",
        "5x",
        "1s1s",
        "1h1h",
        "s",
        "-5m",
        "5 m",
        "1.5h",
        "5m junk",
        "junk 5m",
        "1000000000w",
        "99999999999999999999999999d",
        "9" * 5000 + "s",
    ],
)
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_duration(text)


def test_parse_duration_non_text() -> None:
    with pytest.raises(PolicyError):
        parse_duration(30)  # type: ignore[arg-type]


def test_parse_duration_limit_is_inclusive() -> None:
    seconds = MAX_DURATION_MS // S
    assert parse_duration(f"{seconds}s") == MAX_DURATION_MS
    with pytest.raises(PolicyError, match="too long"):
        parse_duration(f"{seconds + 1}s")


def test_parse_duration_error_says_what_is_wrong() -> None:
    with pytest.raises(PolicyError, match="largest first"):
        parse_duration("1m1h")
    with pytest.raises(PolicyError, match="minimum is 1s"):
        parse_duration("0s")
    with pytest.raises(PolicyError, match="empty"):
        parse_duration("")


@pytest.mark.parametrize(
    ("ms", "text"),
    [(S, "1s"), (90 * M, "1h30m"), (W + D, "1w1d"), (2 * D + 5 * S, "2d5s"), (0, "0s")],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@given(st.integers(min_value=1, max_value=MAX_DURATION_MS // S).map(lambda s: s * S))
def test_format_duration_round_trips(ms: int) -> None:
    assert parse_duration(format_duration(ms)) == ms


@given(st.text(max_size=30))
def test_parse_duration_only_raises_policy_error(text: str) -> None:
    try:
        ms = parse_duration(text)
    except PolicyError:
        return
    assert S <= ms <= MAX_DURATION_MS


# --- the Policy value object ---------------------------------------------------


def test_policy_constructors() -> None:
    assert Policy.off() == Policy(Mode.OFF)
    assert not Policy.off().active
    p = Policy.after_read(M, H, Readers.ANY)
    assert (p.mode, p.timer_ms, p.cap_ms, p.readers) == (Mode.AFTER_READ, M, H, Readers.ANY)
    assert p.active
    assert Policy.after_read(M, M).cap_ms == M  # cap == timer is allowed


@pytest.mark.parametrize(
    "build",
    [
        lambda: Policy.after_read(H, M),  # cap shorter than the timer
        lambda: Policy(Mode.OFF, timer_ms=M),
        lambda: Policy(Mode.OFF, cap_ms=M),
        lambda: Policy(Mode.AFTER_SEND, M, cap_ms=H),
        lambda: Policy(Mode.AFTER_SEND, None),
        lambda: Policy.after_send(999),
        lambda: Policy.after_send(0),
        lambda: Policy.after_send(-S),
        lambda: Policy.after_send(MAX_DURATION_MS + 1),
        lambda: Policy.after_send(True),  # type: ignore[arg-type]
        lambda: Policy.after_send(1.5 * S),  # type: ignore[arg-type]
        lambda: Policy(Mode.AFTER_READ, M, None),
    ],
)
def test_policy_validation(build) -> None:
    with pytest.raises(PolicyError):
        build()


def test_describe_mentions_the_durations() -> None:
    assert "off" in Policy.off().describe()
    assert "1h30m" in Policy.after_send(90 * M).describe()
    text = Policy.after_read(5 * M, 2 * D, Readers.ANY).describe()
    assert "5m" in text and "2d" in text and "any" in text


# --- policy_from_state -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "policy"),
    [
        ({}, Policy.off()),
        ({"mode": "off"}, Policy.off()),
        ({"mode": "after_send", "timer_ms": 30 * S}, Policy.after_send(30 * S)),
        (
            {"mode": "after_read", "timer_ms": M, "cap_ms": D},
            Policy.after_read(M, D, Readers.ALL),
        ),
        (
            {"mode": "after_read", "timer_ms": M, "cap_ms": D, "readers": "any"},
            Policy.after_read(M, D, Readers.ANY),
        ),
        # Unknown extra keys are tolerated (newer writers may add some).
        ({"mode": "after_send", "timer_ms": M, "future": 1}, Policy.after_send(M)),
    ],
)
def test_policy_from_state_valid(content: dict, policy: Policy) -> None:
    assert policy_from_state(content) == policy


@pytest.mark.parametrize(
    "content",
    [
        None,
        [],
        "after_send",
        {"mode": "sometimes"},
        {"mode": None, "timer_ms": M},
        {"timer_ms": M},  # missing mode
        {"mode": "after_send"},  # missing timer
        {"mode": "after_send", "timer_ms": "60000"},
        {"mode": "after_send", "timer_ms": 60.0},
        {"mode": "after_send", "timer_ms": True},
        {"mode": "after_send", "timer_ms": 999},
        {"mode": "after_send", "timer_ms": -M},
        {"mode": "after_send", "timer_ms": MAX_DURATION_MS + 1},
        {"mode": "after_read", "timer_ms": M},  # missing cap
        {"mode": "after_read", "timer_ms": H, "cap_ms": M},  # cap < timer
        {"mode": "after_read", "timer_ms": M, "cap_ms": True},
        {"mode": "after_read", "timer_ms": M, "cap_ms": D, "readers": "some"},
        {"mode": "after_read", "timer_ms": M, "cap_ms": D, "readers": None},
        {"mode": ["after_send"], "timer_ms": M},
        {"mode": {"x": 1}, "timer_ms": M},
    ],
)
def test_policy_from_state_invalid(content: object) -> None:
    with pytest.raises(PolicyError):
        policy_from_state(content)


@pytest.mark.parametrize(
    "policy",
    [
        Policy.off(),
        Policy.after_send(S),
        Policy.after_read(M, W),
        Policy.after_read(M, M, Readers.ANY),
    ],
)
def test_state_round_trip(policy: Policy) -> None:
    assert policy_from_state(policy.to_state()) == policy


# --- policy_from_beeper ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "policy"),
    [
        ({}, Policy.off()),
        ({"type": "", "timer": 0}, Policy.off()),
        ({"type": None}, Policy.off()),
        ({"type": "after_send", "timer": H}, Policy.after_send(H)),
        # after_read gets the configured cap ...
        ({"type": "after_read", "timer": H}, Policy.after_read(H, DEFAULT_CAP)),
        # ... or the timer itself when the timer is longer than that cap.
        ({"type": "after_read", "timer": 2 * W}, Policy.after_read(2 * W, 2 * W)),
    ],
)
def test_policy_from_beeper_valid(content: dict, policy: Policy) -> None:
    assert policy_from_beeper(content, DEFAULT_CAP) == policy


@pytest.mark.parametrize(
    "content",
    [
        None,
        "after_send",
        [{"type": "after_send", "timer": H}],
        {"type": "after_send"},
        {"type": "after_send", "timer": "3600000"},
        {"type": "after_send", "timer": True},
        {"type": "after_send", "timer": 3.6e6},
        {"type": "after_send", "timer": 500},
        {"type": "after_read", "timer": False},
        {"type": "whenever", "timer": H},
        {"type": "off", "timer": H},
        {"timer": H},  # a timer without a type
        {"type": ["after_send"], "timer": H},
    ],
)
def test_policy_from_beeper_invalid(content: object) -> None:
    with pytest.raises(PolicyError):
        policy_from_beeper(content, DEFAULT_CAP)


@pytest.mark.parametrize(
    "policy", [Policy.off(), Policy.after_send(H), Policy.after_read(M, DEFAULT_CAP)]
)
def test_beeper_round_trip(policy: Policy) -> None:
    assert policy_from_beeper(policy.to_beeper(), DEFAULT_CAP) == policy


# --- arbitrary input never escapes as anything but PolicyError ----------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values near what the parsers look for, so the deep branches are reached too.
interesting = (
    st.sampled_from(["off", "after_send", "after_read", "all", "any", "", "AFTER_SEND"])
    | st.integers(min_value=-2 * S, max_value=2 * W)
    | st.sampled_from([S, M, H, D, W, MAX_DURATION_MS, MAX_DURATION_MS + 1, True, False, 1.0 * M])
    | json_values
)
policy_like = st.dictionaries(
    st.sampled_from(["mode", "timer_ms", "cap_ms", "readers", "type", "timer", "other"]),
    interesting,
    max_size=5,
)


def _parses_or_policy_error(parse, content: object) -> None:
    try:
        result = parse(content)
    except PolicyError:
        return
    assert isinstance(result, Policy)
    # Whatever parses is a valid policy and survives its own serialisation.
    assert policy_from_state(result.to_state()) == result


@settings(max_examples=300)
@given(st.one_of(policy_like, json_values))
def test_policy_from_state_total(content: object) -> None:
    _parses_or_policy_error(policy_from_state, content)


@settings(max_examples=300)
@given(st.one_of(policy_like, json_values), st.integers(min_value=S, max_value=MAX_DURATION_MS))
def test_policy_from_beeper_total(content: object, cap: int) -> None:
    _parses_or_policy_error(lambda c: policy_from_beeper(c, cap), content)


# --- resolve_policy -------------------------------------------------------------------


def _lethe(policy: Policy, ts: int, sender: str = "@a:x") -> StatePolicy:
    return StatePolicy(policy, POLICY_EVENT_TYPE, sender, ts)


def _beeper(policy: Policy, ts: int, sender: str = "@b:x") -> StatePolicy:
    return StatePolicy(policy, BEEPER_EVENT_TYPE, sender, ts)


def test_resolve_none() -> None:
    assert resolve_policy(None, None) is None
    lethe = _lethe(Policy.after_send(M), 1)
    beeper = _beeper(Policy.after_send(H), 1)
    assert resolve_policy(lethe, None) is lethe
    assert resolve_policy(None, beeper) is beeper


def test_resolve_newer_wins() -> None:
    lethe = _lethe(Policy.after_send(M), 100)
    beeper = _beeper(Policy.after_send(H), 200)
    assert resolve_policy(lethe, beeper) is beeper
    older_beeper = _beeper(Policy.after_send(H), 50)
    assert resolve_policy(lethe, older_beeper) is lethe
    beeper_off = _beeper(Policy.off(), 200)
    assert resolve_policy(lethe, beeper_off) is beeper_off


def test_resolve_newer_lethe_wins_over_beeper() -> None:
    beeper = _beeper(Policy.after_send(H), 100)
    lethe = _lethe(Policy.after_read(M, D, Readers.ANY), 200)
    assert resolve_policy(lethe, beeper) is lethe


def test_resolve_mirroring_beeper_keeps_lethe_cap_and_readers() -> None:
    lethe = _lethe(Policy.after_read(M, 2 * D, Readers.ANY), 100)
    # What Lethe itself writes alongside, read back with the default cap, newer.
    mirror = _beeper(policy_from_beeper(lethe.policy.to_beeper(), DEFAULT_CAP), 101)
    assert mirror.policy != lethe.policy
    winner = resolve_policy(lethe, mirror)
    assert winner is not None
    assert winner.policy == Policy.after_read(M, 2 * D, Readers.ANY)
    # A Beeper event with a different timer is a real change.
    changed = _beeper(Policy.after_read(5 * M, DEFAULT_CAP), 101)
    assert resolve_policy(lethe, changed) is changed
