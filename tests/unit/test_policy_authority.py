"""Who can change a room's policy through its state, and what a redaction of a policy
event does: the engine's side (ingest) and the bot's reading of a sync (SyncReader)."""

from __future__ import annotations

from typing import Any

from nio import SyncResponse

from bot.engine.model import Message, PolicyEvent
from bot.engine.policy import BEEPER_EVENT_TYPE, POLICY_EVENT_TYPE, Policy
from bot.front.reader import SyncReader
from bot.matrix.events import to_item

from .conftest import ADMIN, ALICE, BOB, BOT, ROOM, Harness

M = 60_000


def _state(event_type: str, sender: str, ts: int, content: dict[str, Any],
           event_id: str, redacted_by: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": event_type, "state_key": "", "sender": sender,
                             "origin_server_ts": ts, "content": content,
                             "event_id": event_id}
    if redacted_by is not None:
        event["unsigned"] = {"redacted_because": {
            "type": "m.room.redaction", "sender": redacted_by, "redacts": event_id,
            "event_id": f"$redaction-{event_id}", "origin_server_ts": ts + 1, "content": {}}}
    return event


async def test_redacted_policy_events_are_not_an_off(h: Harness) -> None:
    t = h.now()
    policy = Policy.after_send(M)
    lethe = _state(POLICY_EVENT_TYPE, ADMIN, t, policy.to_state(), "$lethe")
    beeper = _state(BEEPER_EVENT_TYPE, ADMIN, t + 1, policy.to_beeper(), "$beeper")
    await h.ingest(to_item(lethe), to_item(beeper))
    assert (await h.room_row())["policy_sender"] == ADMIN

    # After a restart the state block holds both, pruned by BOB's redactions.
    pruned = [to_item(_state(e["type"], ADMIN, e["origin_server_ts"], {}, e["event_id"], BOB),
                      in_timeline=False) for e in (lethe, beeper)]
    assert all(isinstance(p, PolicyEvent) and p.redacted_by == BOB for p in pruned)
    result = await h.ingest(*pruned, Message("$m1", ALICE, h.now()))
    assert result.policy_changes == () and result.invalid_policies == ()
    assert (await h.event("$m1"))["due_at"] == h.now() + M

    # Seen redacted in a timeline (a gap paged in later): ignored, and said so, naming
    # who redacted it; the policy in force stays.
    late = _state(BEEPER_EVENT_TYPE, ALICE, h.now(), {}, "$late", BOB)
    result = await h.ingest(to_item(late), Message("$m2", ALICE, h.now()))
    [bad] = result.invalid_policies
    assert bad.sender == ALICE and BOB in bad.reason and "redacted" in bad.reason
    assert result.policy_changes == ()
    assert (await h.event("$m2"))["due_at"] == h.now() + M


async def test_empty_beeper_event_sent_as_state_is_an_off(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    off = _state(BEEPER_EVENT_TYPE, BOB, h.now() + 1, {}, "$off")
    result = await h.ingest(to_item(off))
    [change] = result.policy_changes
    assert (change.policy, change.sender) == (Policy.off(), BOB)


async def test_a_refused_policy_event_changes_nothing_and_is_reported(h: Harness) -> None:
    await h.set_policy(Policy.after_send(M))
    event = PolicyEvent(BEEPER_EVENT_TYPE, BOB, h.now() + 1, {}, refused="no power")
    result = await h.ingest(event, Message("$m1", ALICE, h.now()))
    [bad] = result.invalid_policies
    assert (bad.sender, bad.reason) == (BOB, "no power")
    assert result.policy_changes == ()
    assert (await h.event("$m1"))["due_at"] == h.now() + M


def _sync(room: str, state: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> SyncResponse:
    resp = SyncResponse.from_dict({"next_batch": "s1", "rooms": {"join": {room: {
        "state": {"events": state},
        "timeline": {"events": timeline, "limited": False, "prev_batch": "p"}}}}})
    assert isinstance(resp, SyncResponse), resp
    return resp


def _power(users: dict[str, int], ts: int, event_id: str) -> dict[str, Any]:
    # BOB (50) may send Beeper's event but not Lethe's: the homeserver takes his
    # Beeper event, Lethe must not.
    return _state("m.room.power_levels", ADMIN, ts, {
        "users": users, "state_default": 50, "events": {POLICY_EVENT_TYPE: 100}}, event_id)


def _policies(resp: SyncResponse, reader: SyncReader, known: set[str]) -> list[PolicyEvent]:
    [update] = reader.read(resp, known, 0).updates
    return [i for i in update.timeline if isinstance(i, PolicyEvent)]


def test_a_policy_event_needs_power_for_both_events_at_its_point_of_the_timeline() -> None:
    reader = SyncReader(BOT, "!lethe")
    create = _state("m.room.create", ADMIN, 1, {"room_version": "10"}, "$create")
    state = [create, _power({ADMIN: 100, BOB: 50, BOT: 100}, 2, "$pl1")]
    beeper = {"type": "after_send", "timer": M}
    timeline = [
        _state(BEEPER_EVENT_TYPE, BOB, 3, beeper, "$b1"),  # BOB: 50, Lethe's needs 100
        _state(BEEPER_EVENT_TYPE, ADMIN, 4, beeper, "$b2"),
        _power({ADMIN: 100, BOB: 100, BOT: 100}, 5, "$pl2"),  # BOB promoted
        _state(BEEPER_EVENT_TYPE, BOB, 6, beeper, "$b3"),
        _state(POLICY_EVENT_TYPE, BOT, 7, Policy.after_send(M).to_state(), "$l1"),
    ]
    found = _policies(_sync(ROOM, state, timeline), reader, {ROOM})
    assert [p.event_id for p in found] == ["$b1", "$b2", "$b3", "$l1"]
    assert found[0].refused is not None and POLICY_EVENT_TYPE in found[0].refused
    assert "100" in found[0].refused and BOB in found[0].refused
    assert [p.refused for p in found[1:]] == [None, None, None]


def test_room_v12_creators_may_change_the_policy_and_join_state_is_taken_as_is() -> None:
    reader = SyncReader(BOT, "!lethe")
    create = _state("m.room.create", ALICE, 1, {"room_version": "12"}, "$create")
    power = _power({BOB: 50, BOT: 100}, 2, "$pl")  # ALICE, the creator, is not listed
    beeper = {"type": "after_send", "timer": M}
    old = _state(BEEPER_EVENT_TYPE, BOB, 3, beeper, "$old")
    # The bot joins a room whose state already holds BOB's event: taken as it stands.
    [joined] = _policies(_sync(ROOM, [create, power, old], []), reader, set())
    assert joined.refused is None and not joined.in_timeline
    # In a room Lethe knows, the same event in the state block is checked.
    [known] = _policies(_sync(ROOM, [create, power, old], []), reader, {ROOM})
    assert known.refused is not None
    [by_creator] = _policies(
        _sync(ROOM, [], [_state(BEEPER_EVENT_TYPE, ALICE, 4, beeper, "$c")]), reader, {ROOM})
    assert by_creator.refused is None
