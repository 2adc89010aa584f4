"""The mirror opt-in in Lethe's state event, and the pure parts of the mirror into
``m.room.retention`` (bot/matrix/retention.py)."""

from __future__ import annotations

import pytest

from bot.engine.policy import (
    BEEPER_EVENT_TYPE,
    POLICY_EVENT_TYPE,
    Policy,
    PolicyError,
    Readers,
    StatePolicy,
    policy_from_state,
    resolve_policy,
)
from bot.engine.power import PowerState
from bot.matrix.retention import RetentionEvent, mirror_status, retention_content

M, H = 60_000, 3_600_000
ME = "@lethe:x"


@pytest.mark.parametrize("policy", [
    Policy.off().mirrored(True),
    Policy.after_send(H).mirrored(True),
    Policy.after_read(M, H, Readers.ANY).mirrored(True),
])
def test_the_opt_in_round_trips_through_state(policy: Policy) -> None:
    content = policy.to_state()
    assert content["mirror_retention"] is True
    assert policy_from_state(content) == policy


def test_without_the_opt_in_the_content_is_as_before() -> None:
    # What Lethe versions before the mirror wrote and read, to the letter.
    assert Policy.after_send(H).to_state() == {"mode": "after_send", "timer_ms": H}
    assert policy_from_state({"mode": "after_send", "timer_ms": H}).mirror_retention is False
    assert policy_from_state({"mode": "after_send", "timer_ms": H,
                              "mirror_retention": False}) == Policy.after_send(H)


@pytest.mark.parametrize("bad", ["yes", 1, None, [], {"on": True}])
def test_a_malformed_opt_in_makes_the_event_invalid(bad: object) -> None:
    with pytest.raises(PolicyError, match="mirror_retention must be true or false"):
        policy_from_state({"mode": "after_send", "timer_ms": H, "mirror_retention": bad})
    with pytest.raises(PolicyError, match="mirror_retention"):
        Policy(mirror_retention=bad)  # type: ignore[arg-type]


def test_the_opt_in_stays_whichever_event_says_the_rule() -> None:
    lethe = StatePolicy(Policy.after_send(H).mirrored(True), POLICY_EVENT_TYPE, "@a:x", 100)
    beeper = StatePolicy(Policy.after_send(M), BEEPER_EVENT_TYPE, "@b:x", 200)
    winner = resolve_policy(lethe, beeper)
    assert winner is not None and winner.sender == "@b:x"
    assert winner.policy == Policy.after_send(M).mirrored(True)
    older = StatePolicy(Policy.after_send(M), BEEPER_EVENT_TYPE, "@b:x", 50)
    assert resolve_policy(lethe, older) is lethe


def test_what_the_mirror_says() -> None:
    assert retention_content(Policy.after_send(H)) == {"max_lifetime": H}
    assert retention_content(Policy.after_read(M, 2 * H)) == {"max_lifetime": 2 * H}
    assert retention_content(Policy.off()) == {}
    assert Policy.after_read(M, 2 * H).mirrored(True).describe().endswith(
        "; mirrored into m.room.retention (max_lifetime 2h)")
    assert "mirrored" not in Policy.after_read(M, 2 * H).describe()


def test_retention_event_of() -> None:
    assert RetentionEvent.of(None) == RetentionEvent()
    event = {"type": "m.room.retention", "content": {"max_lifetime": H}, "sender": "@a:x",
             "event_id": "$e"}
    assert RetentionEvent.of(event) == RetentionEvent({"max_lifetime": H}, "@a:x", "$e")
    # A server that ignores ?format=event answers the content alone.
    assert RetentionEvent.of({"max_lifetime": H}) == RetentionEvent({"max_lifetime": H})
    assert RetentionEvent.of({"content": "junk", "sender": 5}).content == {}
    assert RetentionEvent().says({}) and RetentionEvent({}).says({})


def test_mirror_status_lines() -> None:
    power = PowerState.from_state(None, {"users": {ME: 50}, "state_default": 50})
    on = Policy.after_send(H).mirrored(True)
    mine = RetentionEvent({"max_lifetime": H}, ME)
    assert mirror_status(on, mine, power, ME) == \
        f"on, in step: m.room.retention says max_lifetime 1h (set by {ME})"
    assert mirror_status(on, RetentionEvent(), power, ME) == (
        "on, NOT in step: no m.room.retention in the room, the policy says max_lifetime 1h")
    weak = PowerState.from_state(None, {"users": {ME: 50}, "events": {"m.room.retention": 100}})
    assert mirror_status(on, RetentionEvent({"max_lifetime": 7}, "@a:x"), weak, ME).endswith(
        f"; {ME} may not send it (needs power level 100, has 50)")
    assert mirror_status(Policy.after_send(H), RetentionEvent(), power, ME) == \
        "off; no m.room.retention in the room"
