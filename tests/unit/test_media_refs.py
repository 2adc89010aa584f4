"""Which files a message points at: every place a file or thumbnail can be named, only
well-formed ``mxc://server/media_id``, and a bounded number per event, whatever a
hostile event holds. A decrypted payload is always read as a message."""

from __future__ import annotations

import time
from typing import Any

import pytest
from nio import Event, SyncResponse

from bot.engine.model import Marker, MediaRef, Message
from bot.front.reader import SyncReader
from bot.matrix.events import MAX_MEDIA_PER_EVENT, as_encrypted, media_refs, parse_mxc, to_item

HS = "example.org"


def event(content: Any, event_type: str = "m.room.message", **extra: Any) -> dict[str, Any]:
    return {"event_id": "$e", "sender": "@alice:example.org", "type": event_type,
            "origin_server_ts": 1000, "content": content, **extra}


def ref(media_id: str, server: str = HS) -> MediaRef:
    return MediaRef(server, media_id)


def test_every_place_a_file_is_named() -> None:
    image = {"msgtype": "m.image", "body": "cat.png", "url": f"mxc://{HS}/img",
             "info": {"thumbnail_url": f"mxc://{HS}/thumb"}}
    encrypted = {"msgtype": "m.file", "body": "plan.pdf",
                 "file": {"url": f"mxc://{HS}/enc", "key": {}, "iv": "", "hashes": {}},
                 "info": {"thumbnail_file": {"url": f"mxc://{HS}/encthumb"}}}
    edit = {"msgtype": "m.image", "body": "* new", "m.new_content": {
        "msgtype": "m.image", "url": f"mxc://{HS}/new", "info": {
            "thumbnail_url": f"mxc://{HS}/newthumb"}},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$old"}}
    assert media_refs(image) == (ref("img"), ref("thumb"))
    assert media_refs(encrypted) == (ref("enc"), ref("encthumb"))
    assert media_refs(edit) == (ref("new"), ref("newthumb"))
    sticker = to_item(event({"body": "hi", "url": f"mxc://{HS}/sticker",
                             "info": {"thumbnail_url": f"mxc://{HS}/st"}}, "m.sticker"))
    assert isinstance(sticker, Message)
    assert sticker.media == (ref("sticker"), ref("st"))
    item = to_item(event(edit))
    assert isinstance(item, Message) and item.parent_id == "$old"
    assert item.media == (ref("new"), ref("newthumb"))


def test_the_same_file_twice_counts_once() -> None:
    content = {"url": f"mxc://{HS}/a", "info": {"thumbnail_url": f"mxc://{HS}/a"},
               "m.new_content": {"url": f"mxc://{HS}/a"}}
    assert media_refs(content) == (ref("a"),)


@pytest.mark.parametrize("value", [
    "mxc://", "mxc://example.org", "mxc://example.org/", "mxc:///abc",
    "mxc://exa mple.org/abc", "mxc://example.org/ab/cd", "mxc://example.org/ab%2Fcd",
    "mxc://example.org/../etc", "mxc://example.org/abc?x=1", "mxc://example.org/abc#x",
    "mxc://example.org:123456/abc", "mxc://user@example.org/abc", "mxc://example.org/ab\u00e9",
    "mxc://example.org/ab\ncd", "MXC://example.org/abc", "https://example.org/abc",
    " mxc://example.org/abc", "mxc://example.org/" + "a" * 256, "mxc://" + "h" * 256 + "/abc",
    "mxc://[::1/abc", 42, 4.2, True, None, ["mxc://example.org/abc"],
    {"url": "mxc://example.org/abc"},
])
def test_malformed_references_are_not_files(value: object) -> None:
    assert parse_mxc(value) is None
    assert media_refs({"url": value, "info": {"thumbnail_url": value},
                       "file": {"url": value}}) == ()


@pytest.mark.parametrize("value, expected", [
    ("mxc://example.org/abcDEF123_-", ref("abcDEF123_-")),
    ("mxc://matrix.example.org:8448/x", ref("x", "matrix.example.org:8448")),
    ("mxc://127.0.0.1:8008/x", ref("x", "127.0.0.1:8008")),
    ("mxc://[::1]:8448/x", ref("x", "[::1]:8448")),
])
def test_well_formed_references(value: str, expected: MediaRef) -> None:
    assert parse_mxc(value) == expected


@pytest.mark.parametrize("content", [
    None, [], "mxc://example.org/abc", 7,
    {"url": 1, "file": "mxc://example.org/abc", "info": "x"},
    {"info": {"thumbnail_file": ["mxc://example.org/abc"]}},
    {"m.new_content": "mxc://example.org/abc"},
    {"m.new_content": {"m.new_content": {"url": "mxc://example.org/nested"}}},
])
def test_non_string_and_misplaced_fields_give_no_file(content: Any) -> None:
    item = to_item(event(content))
    assert isinstance(item, Message) and item.media == ()


def test_thousands_of_references_store_a_bounded_few() -> None:
    """Only the fixed places are read, and at most MAX_MEDIA_PER_EVENT of them."""
    urls = [f"mxc://{HS}/f{i}" for i in range(5000)]
    hostile: dict[str, Any] = {
        "url": urls, "file": {"url": urls}, "info": {"thumbnail_url": urls},
        **{f"url{i}": u for i, u in enumerate(urls)},
        "m.new_content": {"url": urls, "info": {f"thumbnail_url{i}": u
                                                for i, u in enumerate(urls)}},
        "items": [{"url": u} for u in urls],
    }
    started = time.perf_counter()
    assert media_refs(hostile) == ()
    assert time.perf_counter() - started < 0.01
    full = {"url": f"mxc://{HS}/a", "file": {"url": f"mxc://{HS}/b"},
            "info": {"thumbnail_url": f"mxc://{HS}/c", "thumbnail_file": {"url": f"mxc://{HS}/d"}},
            "m.new_content": {"url": f"mxc://{HS}/e", "file": {"url": f"mxc://{HS}/f"},
                              "info": {"thumbnail_url": f"mxc://{HS}/g",
                                       "thumbnail_file": {"url": f"mxc://{HS}/h"}}}}
    assert len(media_refs(full)) == MAX_MEDIA_PER_EVENT == 8


def test_a_redacted_or_state_event_carries_no_file() -> None:
    redacted = to_item(event({"url": f"mxc://{HS}/a"},
                             unsigned={"redacted_because": {"sender": "@mod:x"}}))
    assert isinstance(redacted, Marker)
    avatar = to_item(event({"url": f"mxc://{HS}/a"}, "m.room.avatar", state_key=""))
    assert isinstance(avatar, Marker)


def test_a_decrypted_payload_is_always_a_message() -> None:
    """What only the ciphertext claims (a redaction, a membership, power levels) is not
    believed: those are never encrypted, and anyone can encrypt a forged one."""
    envelope = event({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "..."},
                     "m.room.encrypted")
    forged_redaction = {**envelope, "type": "m.room.redaction", "redacts": "$victim",
                        "content": {"redacts": "$victim"}}
    forged_leave = {**envelope, "type": "m.room.member", "state_key": "@bob:example.org",
                    "content": {"membership": "leave"}}
    forged_redacted = {**envelope, "type": "m.room.message", "content": {"body": "stays"},
                       "unsigned": {"redacted_because": {"sender": "@mallory:example.org"}}}
    for forged in (forged_redaction, forged_leave, forged_redacted):
        item = to_item(as_encrypted(forged, forged["content"]))
        assert isinstance(item, Message) and item.event_id == "$e", item
    image = to_item(as_encrypted(envelope, {"msgtype": "m.image", "url": f"mxc://{HS}/img"}))
    assert isinstance(image, Message) and image.media == (ref("img"),)
    assert to_item(as_encrypted(envelope, "not a dict")) == Message("$e", envelope["sender"],
                                                                    1000)


def test_the_sync_reader_reads_what_nio_decrypted_as_a_message() -> None:
    """nio puts the decrypted event in the timeline; its ``source`` holds the plaintext
    (so the files of an encrypted message are seen), and whatever type it claims."""
    room = "!room:example.org"
    body = {"next_batch": "s2", "rooms": {"join": {room: {
        "timeline": {"events": [], "limited": False, "prev_batch": "p1"},
        "state": {"events": []}, "ephemeral": {"events": []}}}}}
    resp = SyncResponse.from_dict(body)
    assert isinstance(resp, SyncResponse)
    base = {"sender": "@mallory:example.org", "origin_server_ts": 1000, "room_id": room}
    plaintexts = [
        {**base, "event_id": "$img", "type": "m.room.message",
         "content": {"msgtype": "m.image", "body": "x.png",
                     "file": {"url": f"mxc://{HS}/enc", "key": {"k": "x"}, "iv": "x",
                              "hashes": {"sha256": "x"}, "v": "v2"}}},
        {**base, "event_id": "$fake-redaction", "type": "m.room.redaction",
         "redacts": "$victim", "content": {"redacts": "$victim"}},
        {**base, "event_id": "$fake-power", "type": "m.room.power_levels", "state_key": "",
         "content": {"users": {"@mallory:example.org": 100}}},
        {**base, "event_id": "$fake-redacted", "type": "m.room.message",
         "content": {"msgtype": "m.text", "body": "never expires"},
         "unsigned": {"redacted_because": {"sender": "@mallory:example.org"}}},
    ]
    timeline = []
    for plain in plaintexts:
        decrypted = Event.parse_decrypted_event(dict(plain))
        decrypted.decrypted = True
        timeline.append(decrypted)
    resp.rooms.join[room].timeline.events = timeline
    reader = SyncReader("@lethe:example.org", "!lethe")

    reading = reader.read(resp, {room}, 2000)

    items = reading.updates[0].timeline
    assert [type(i) for i in items] == [Message] * 4, items
    assert isinstance(items[0], Message) and items[0].media == (ref("enc"),)
    assert reading.power_changed == set()
