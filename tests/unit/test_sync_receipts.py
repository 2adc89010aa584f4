"""Receipts from the raw /sync JSON, each on its own: one malformed receipt (a remote
server can send anything) must not cost the valid ones of the same sync."""

from __future__ import annotations

from typing import Any

from nio import ReceiptEvent, SyncResponse

from bot.engine.model import Receipt
from bot.front.client import LetheClient
from bot.front.reader import SyncReader
from bot.matrix.events import clean_receipts, ephemeral_by_room, receipts_from_ephemeral

BOT = "@lethe:ours.example"
ROOM = "!room:ours.example"


def sync_body(receipt_content: dict[str, Any]) -> dict[str, Any]:
    return {
        "next_batch": "s2",
        "rooms": {"join": {ROOM: {
            "timeline": {"events": [], "limited": False, "prev_batch": "p1"},
            "state": {"events": []},
            "ephemeral": {"events": [
                {"type": "m.typing", "content": {"user_ids": ["@alice:ours.example"]}},
                {"type": "m.receipt", "content": receipt_content},
            ]},
        }}},
    }


# One EDU, as Synapse merges a room's receipts: alice's is valid; from a remote
# server, mallory's has a timestamp that is not an integer and trudy's a thread id that
# is not a string.
MIXED = {
    "$good:ours.example": {"m.read": {"@alice:ours.example": {"ts": 1700000000000}}},
    "$bad:evil.example": {"m.read": {"@mallory:evil.example": {"ts": "yesterday"},
                                     "@trudy:evil.example": {"ts": 1, "thread_id": 7}}},
}


class FakeTransport:
    """What nio's parse_body reads of an aiohttp response."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.content_type = "application/json"
        self.content_disposition = None
        self.status = 200

    async def json(self) -> dict[str, Any]:
        return self._body


async def test_a_malformed_receipt_does_not_cost_the_valid_one_in_the_same_sync() -> None:
    body = sync_body(MIXED)
    client = LetheClient("http://127.0.0.1:1", BOT)
    try:
        resp = await client.create_matrix_response(SyncResponse, FakeTransport(body))
    finally:
        await client.close()
    assert isinstance(resp, SyncResponse)
    # What nio alone makes of it: the whole receipt event fails its schema, so the room
    # has no receipt at all (the bug this guards against).
    parsed = resp.rooms.join[ROOM].ephemeral
    assert not any(isinstance(e, ReceiptEvent) for e in parsed)

    reading = SyncReader(BOT, "!lethe").read(resp, {ROOM}, 0, ephemeral=client.last_ephemeral)
    (update,) = reading.updates
    assert Receipt("@alice:ours.example", "$good:ours.example", None,
                   1700000000000) in update.receipts
    # mallory's still marks a position (its time unknown); trudy's could be read as
    # covering every thread, so it is left out.
    assert Receipt("@mallory:evil.example", "$bad:evil.example", None, None) in update.receipts
    assert {r.user_id for r in update.receipts} == {"@alice:ours.example",
                                                    "@mallory:evil.example"}


def test_receipts_that_cannot_be_stored_are_left_out_one_by_one() -> None:
    content = {
        "$good:x": {"m.read": {"@alice:x": {"ts": 5}}},
        "not-an-event-id": {"m.read": {"@bob:x": {"ts": 5}}},
        "$lone:x": {"m.read": {"@carol:x\ud800": {"ts": 5}}},  # SQLite cannot store it
        "$thread:x": {"m.read": {"@dave:x": {"ts": 5, "thread_id": "\udfff"}}},
        "$numeric:x": {"m.read": {"@frank:x": {"ts": 5, "thread_id": 7}}},
        "$private:x": {"m.read.private": {"@erin:x": {"ts": 5}}},
        "$shape:x": {"m.read": ["@grace:x"]},
    }
    usable, bad = clean_receipts(content)
    assert usable == [Receipt("@alice:x", "$good:x", None, 5)]
    assert bad == 4  # the list of readers holds no receipt to count
    found, bad = receipts_from_ephemeral([
        {"type": "m.receipt", "content": content},
        {"type": "m.receipt", "content": "not an object"},
        "not an event",
    ])
    assert found == usable and bad == 5
    assert receipts_from_ephemeral(None) == ([], 0)


def test_ephemeral_events_are_found_by_room_in_any_body() -> None:
    assert ephemeral_by_room(sync_body(MIXED))[ROOM][1]["type"] == "m.receipt"
    for body in (None, [], {"rooms": []}, {"rooms": {"join": {ROOM: "x"}}}):
        assert ephemeral_by_room(body) == {}
