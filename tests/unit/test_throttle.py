"""How often the bot answers commands (bot/front/throttle.py), on a fake clock."""

from __future__ import annotations

from bot.front.throttle import ReplyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_from_one_member_gets_a_couple_of_replies_then_one_per_30_s() -> None:
    clock = Clock()
    throttle = ReplyThrottle(clock=clock)
    answered = [throttle.allow("!r", "@bob:x") for _ in range(30)]
    assert answered.count(True) == 2 and answered[:2] == [True, True]
    # Others are not held back by bob's flood.
    assert throttle.allow("!r", "@alice:x")
    assert throttle.allow("!other", "@bob:x")
    clock.now += 29
    assert not throttle.allow("!r", "@bob:x")
    clock.now += 1
    assert throttle.allow("!r", "@bob:x")
    assert not throttle.allow("!r", "@bob:x")


def test_all_rooms_together_get_at_most_per_minute_replies() -> None:
    clock = Clock()
    throttle = ReplyThrottle(clock=clock, per_minute=20)
    answered = [throttle.allow(f"!r{i}", f"@u{i}:x") for i in range(50)]
    assert answered.count(True) == 20
    clock.now += 3  # one more every 3 s
    assert throttle.allow("!new", "@new:x")
    assert not throttle.allow("!new2", "@new2:x")


def test_idle_members_are_forgotten() -> None:
    clock = Clock()
    throttle = ReplyThrottle(clock=clock, per_minute=10**9)
    for i in range(10_000):
        throttle.allow("!r", f"@u{i}:x")
    clock.now += 3600
    throttle.allow("!r", "@late:x")
    assert len(throttle._members) == 1
