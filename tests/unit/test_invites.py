"""Invites without a homeserver: whose invite it really is, and the join retry rule."""

from __future__ import annotations

from typing import Any

from nio import SyncResponse

from bot.front.joins import (
    FIRST_DELAY_S,
    GIVE_UP_AFTER_S,
    MAX_DELAY_S,
    JoinRetries,
    load_pending,
)
from bot.front.reader import SyncReader

BOT = "@lethe:ours.example"


def member(sender: str, state_key: str, membership: str) -> dict[str, Any]:
    return {"type": "m.room.member", "sender": sender, "state_key": state_key,
            "content": {"membership": membership}}


def invite_sync(invite_state: list[dict[str, Any]]) -> SyncResponse:
    resp = SyncResponse.from_dict({
        "next_batch": "s1",
        "rooms": {"invite": {"!r:evil.example": {"invite_state": {"events": invite_state}}}},
    })
    assert isinstance(resp, SyncResponse)
    return resp


def test_the_inviter_is_the_sender_of_the_real_invite_event_not_forged_stripped_state() -> None:
    """A remote server puts a member event 'from' an allowed local user into the
    stripped state; Synapse appends the real invite event last."""
    forged = member("@admin:ours.example", BOT, "invite")
    real = member("@mallory:evil.example", BOT, "invite")
    reading = SyncReader(BOT, "!lethe").read(invite_sync([forged, real]), set(), 0)
    assert [i.inviter for i in reading.invites] == ["@mallory:evil.example"]


def test_a_direct_chat_is_told_by_the_real_invite_events_is_direct() -> None:
    """The kind of room a person's default is chosen by (bot/front/defaults.py): the
    ``is_direct`` of the real invite event, not of forged stripped state before it."""
    forged = member("@admin:ours.example", BOT, "invite")
    forged["content"]["is_direct"] = True
    real = member("@alice:ours.example", BOT, "invite")
    reading = SyncReader(BOT, "!lethe").read(invite_sync([forged, real]), set(), 0)
    assert [(i.inviter, i.is_direct) for i in reading.invites] == [("@alice:ours.example",
                                                                    False)]
    direct = member("@alice:ours.example", BOT, "invite")
    direct["content"]["is_direct"] = True
    reading = SyncReader(BOT, "!lethe").read(invite_sync([direct]), set(), 0)
    assert [i.is_direct for i in reading.invites] == [True]


def test_join_retries_back_off_then_give_up() -> None:
    retries = JoinRetries()
    delays = [retries.failed("!r:x", "@a:x", "not invited", i * 1000) for i in range(8)]
    assert delays[0] == FIRST_DELAY_S and delays[1] == 2 * FIRST_DELAY_S
    assert max(d for d in delays if d is not None) <= MAX_DELAY_S
    assert [p.attempts for p in retries.pending()] == [8]
    # Survives a restart through the stored JSON, damaged JSON counts as nothing.
    again = JoinRetries(load_pending(retries.to_json()))
    assert again.pending() == retries.pending()
    assert load_pending("{broken") == {}
    give_up_at = int(GIVE_UP_AFTER_S * 1000)
    assert again.failed("!r:x", "@a:x", "not invited", give_up_at) is None
    assert again.pending() == []
    assert not again.done("!r:x")
