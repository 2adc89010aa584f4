"""Making the room's rule visible in every client, after each policy notice: the
notice pinned (``m.room.pinned_events``, shown at the top of the room), the timers
the room accepts published (``com.beeper.room_features``), and, with
``notices.topic``, the rule in the topic.

The pinned notice does not expire while pinned: the engine holds it
(bot/engine/holds.py), whether its echo has been ingested yet or not. Which pin is
the bot's is the room's state and the engine's holds together; the bot never pins
anything but a policy notice it just sent, so a member who unpins it by hand is not
overruled until the policy next changes. Whatever the bot cannot do it says in
`!lethe status` (and `lethe rooms show`), from the meta key PIN_PROBLEMS_KEY (bot/matrix/pins.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.engine.policy import Policy
from bot.engine.power import describe_level
from bot.matrix.pins import (
    PIN_PROBLEMS_KEY,
    PINNED_EVENTS_TYPE,
    UNPINNED,
    cannot_pin,
    load_problems,
    own_pins,
    pin_summary,
    read_pins,
    repinned,
    write_pins,
)
from bot.matrix.roomfeatures import (
    ROOM_FEATURES_TYPE,
    bounded_capability,
    publish_timers,
)
from bot.matrix.topic import TOPIC_TYPE, keep_topic

if TYPE_CHECKING:
    from bot.front.bot import LetheBot

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ShowPolicy:
    """Make ``policy`` visible in ``room_id``, after its notice ``notice_id`` (None:
    none went out): queued behind the notice, so a command's answer comes first."""

    room_id: str
    policy: Policy
    notice_id: str | None


@dataclass(frozen=True)
class PinsChanged:
    """Somebody else changed the room's pinned events."""

    room_id: str


class Visibility:
    def __init__(self, bot: LetheBot) -> None:
        self._bot = bot

    async def act(self, action: ShowPolicy | PinsChanged) -> None:
        if isinstance(action, ShowPolicy):
            await self.announced(action.room_id, action.policy, action.notice_id)
        else:
            await self._unpinned(action.room_id)

    async def _unpinned(self, room_id: str) -> None:
        """A notice a member unpinned by hand is not pinned again (until the next
        policy change); it expires by its own rule again at once."""
        bot = self._bot
        assert bot.engine is not None and bot.http is not None
        held = [found.event_id for found in await bot.engine.held(room_id)]
        if not held:
            return
        pins = await read_pins(bot.http, room_id)
        if pins.problem is not None:
            return  # kept as it is: the next change looks again
        gone = [event_id for event_id in held if event_id not in pins.pinned]
        for event_id in gone:
            log.info("the policy notice in %s was unpinned by hand; it expires by its rule "
                     "again", room_id)
            await bot.engine.release(room_id, event_id)
        if gone and len(gone) == len(held):
            await self._note(room_id, UNPINNED)

    async def announced(self, room_id: str, policy: Policy, notice_id: str | None) -> None:
        """After the notice announcing ``policy`` in ``room_id`` (``notice_id``: its
        event id; None if none went out)."""
        notices = self._bot.config.notices
        # notices.pin off: nothing new is pinned, and a pin of before goes now.
        await self._pin(room_id, policy, notice_id if notices.pin else None)
        if notices.room_features:
            await self._features(room_id, policy)
        # Off: a suffix left from when it was on is taken out (only where there is one).
        await self._topic(room_id, policy if notices.topic else None)

    async def _pin(self, room_id: str, policy: Policy, notice_id: str | None) -> None:
        bot = self._bot
        assert bot.engine is not None and bot.http is not None
        me = bot.config.bot.user_id
        held = [found.event_id for found in await bot.engine.held(room_id)]
        new = notice_id if policy.active else None
        if new is not None and not await bot.engine.hold(room_id, new):
            log.warning("not pinning the policy notice in %s: it is being redacted already",
                        room_id)
            new = None
        power = bot.power(room_id)
        may = power.can_send_state(me, PINNED_EVENTS_TYPE)
        if new is None and not held and not may:
            await self._note(room_id, None)  # nothing to pin, nothing it could unpin
            return
        problem: str | None = None
        changed = False
        if not may:
            problem = cannot_pin(describe_level(power.level(me)),
                                 power.needed_for_state(PINNED_EVENTS_TYPE))
        else:
            pins = await read_pins(bot.http, room_id)
            problem = pins.problem
            if problem is None:
                mine = await own_pins(bot.http, room_id, pins, held, me)
                wanted = repinned(pins.pinned, mine, new)
                changed = wanted != list(pins.pinned)
                if changed:
                    problem = await write_pins(bot.http, room_id, wanted)
        # Held stays only what is pinned: on success the new notice (the old ones, and
        # any a member unpinned by hand, expire by their own rule again); on failure the
        # old ones, still pinned, and the new notice expires like any other.
        for event_id in held if problem is None else [new] if new is not None else []:
            await bot.engine.release(room_id, event_id)
        await self._note(room_id, problem if new is not None or held else None)
        if problem is not None:
            log.warning("could not pin the policy notice in %s: %s", room_id, problem)
        elif changed:
            log.info("policy notice in %s: %s", room_id, "pinned" if new else "unpinned")

    async def _note(self, room_id: str, problem: str | None) -> None:
        engine = self._bot.engine
        assert engine is not None
        problems = load_problems(await engine.get_meta(PIN_PROBLEMS_KEY))
        if problems.get(room_id) == problem:
            return
        if problem is None:
            problems.pop(room_id, None)
        else:
            problems[room_id] = problem
        await engine.set_meta(PIN_PROBLEMS_KEY, json.dumps(problems))

    async def _features(self, room_id: str, policy: Policy) -> None:
        bot = self._bot
        assert bot.http is not None
        if not bot.power(room_id).can_send_state(bot.config.bot.user_id, ROOM_FEATURES_TYPE):
            log.info("not publishing %s in %s: no power to send it", ROOM_FEATURES_TYPE,
                     room_id)
            return
        problem = await publish_timers(bot.http, room_id, bounded_capability(
            bot.config.bounds.for_room(room_id), policy))
        if problem is not None:
            log.warning("could not publish %s in %s: %s", ROOM_FEATURES_TYPE, room_id,
                        problem)

    async def _topic(self, room_id: str, policy: Policy | None) -> None:
        bot = self._bot
        assert bot.http is not None
        if not bot.power(room_id).can_send_state(bot.config.bot.user_id, TOPIC_TYPE):
            if policy is not None:
                log.info("not adding the rule to the topic of %s: no power to", room_id)
            return
        rule = policy.mirrored(False).describe() if policy and policy.active else None
        problem = await keep_topic(bot.http, room_id, rule)
        if problem is not None:
            log.warning("could not keep the rule in the topic of %s: %s", room_id, problem)

    async def status(self, room_id: str, policy: Policy) -> str:
        """The `!lethe status` line: whether the policy notice is pinned, or why not."""
        bot = self._bot
        assert bot.engine is not None and bot.http is not None
        if not bot.config.notices.pin:
            return "Pinned notice: not pinned (notices.pin is off)"
        held = {found.event_id for found in await bot.engine.held(room_id)}
        problem = load_problems(await bot.engine.get_meta(PIN_PROBLEMS_KEY)).get(room_id)
        pins = await read_pins(bot.http, room_id)
        return "Pinned notice: " + pin_summary(policy.active, pins, held, problem,
                                               bot.power(room_id), bot.config.bot.user_id)
