"""A room's pinned events (``m.room.pinned_events``): reading them, and the list with
the bot's own pins replaced, every member's pin kept. The bot's pins are those whose
event the engine holds (its pinned policy notice, bot/engine/holds.py) and, where
its database no longer knows them, any pinned event the bot itself sent."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from bot.engine.power import PowerState, describe_level
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.statewrite import StateProblem, read_state, write_state
from bot.matrix.textmap import load_text_map

PINNED_EVENTS_TYPE = "m.room.pinned_events"


@dataclass(frozen=True)
class Pins:
    """The room's pinned event ids as its state says them (``problem``: why they could
    not be read; ``pinned`` is then empty and must not be written back)."""

    pinned: tuple[str, ...] = ()
    problem: str | None = None


async def read_pins(http: MatrixHttp, room_id: str) -> Pins:
    found = await read_state(http, room_id, PINNED_EVENTS_TYPE)
    if isinstance(found, StateProblem):
        return Pins(problem=found)
    pinned = (found or {}).get("pinned")
    if not isinstance(pinned, list):
        return Pins()  # none, malformed or emptied: nothing pinned that clients show
    return Pins(tuple(e for e in pinned if isinstance(e, str) and e))


# At most this many pins not known as the bot's are looked up by their sender.
_LOOKUPS = 20


async def own_pins(http: MatrixHttp, room_id: str, pins: Pins, held: Collection[str],
                   bot_user_id: str) -> set[str]:
    """The bot's pins among ``pins``: those the engine holds, and (its database lost,
    say) any pinned event the bot itself sent, which can only be a notice of its."""
    mine = {event_id for event_id in pins.pinned if event_id in held}
    for event_id in [e for e in pins.pinned if e not in mine][-_LOOKUPS:]:
        try:
            reply = await http.event(room_id, event_id)
        except HomeserverUnavailable:
            continue
        if reply.ok and reply.body.get("sender") == bot_user_id:
            mine.add(event_id)
    return mine


def repinned(pinned: tuple[str, ...], drop: Collection[str], add: str | None) -> list[str]:
    """``pinned`` without ``drop`` (the bot's earlier pins), with ``add`` last (Element
    shows the newest pin first); every other pin kept in its place."""
    kept = [event_id for event_id in pinned if event_id not in drop and event_id != add]
    return [*kept, add] if add is not None else kept


async def write_pins(http: MatrixHttp, room_id: str, pinned: list[str]) -> str | None:
    """PUT the list; None, or why the homeserver did not take it."""
    return await write_state(http, room_id, PINNED_EVENTS_TYPE, {"pinned": pinned})


def cannot_pin(level: str, needed: int) -> str:
    return (f"I cannot pin the policy notice: my power level is {level} and "
            f"{PINNED_EVENTS_TYPE} needs {needed}")


PIN_PROBLEMS_KEY = "pin_problems"  # meta: {room id: why its notice is not pinned}
UNPINNED = "a member unpinned it; the next policy change pins its notice again"


def load_problems(raw: str | None) -> dict[str, str]:
    """The meta value under PIN_PROBLEMS_KEY (written by bot/front/pinning.py)."""
    return load_text_map(raw)


def pin_summary(active: bool, pins: Pins, held: Collection[str], problem: str | None,
                power: PowerState, bot_user_id: str) -> str:
    """Whether the room's policy notice is pinned, and if not, why: for `!lethe status`
    and `lethe rooms show`. ``held``: the bot's pinned notices the engine holds;
    ``problem``: why its last try failed, if it did."""
    if pins.problem is not None:
        return f"unknown: could not read {PINNED_EVENTS_TYPE} ({pins.problem})"
    mine = [event_id for event_id in pins.pinned if event_id in held]
    if active and not mine and not power.can_send_state(bot_user_id, PINNED_EVENTS_TYPE):
        problem = cannot_pin(describe_level(power.level(bot_user_id)),
                             power.needed_for_state(PINNED_EVENTS_TYPE))
    if not active:
        return "nothing (the policy is off)" if not mine else \
            f"still {mine[-1]}, though the policy is off: {problem or 'not unpinned yet'}"
    if mine and problem is None:
        return f"yes ({mine[-1]}; it does not expire while pinned)"
    if problem == UNPINNED or (problem is None and held):
        return f"no: {UNPINNED}"
    if problem is not None:
        return f"NO: {problem}"
    return "no (the policy was set before I pinned notices, or its notice was not sent)"
