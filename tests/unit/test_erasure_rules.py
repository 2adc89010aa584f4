"""The erasure audit's rules on plain values: what counts as a held original (by
the names of content keys only), what each answer of fetch_event means, the ages
and the bound, and what the doctor concludes from a sample."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bot.cli.erasure import (
    Findings,
    MediaRef,
    MediaStored,
    NotAnAdmin,
    Stored,
    TokenRefused,
    holds_original,
    stored_state,
)
from bot.cli.erasure_doctor import FAIL, OK, WARN, measure
from bot.cli.main import main
from bot.engine.model import Erasure
from bot.erasureconfig import ErasureConfig
from bot.matrix.api import HttpReply

HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_800_000_000_000
ERASURE = ErasureConfig(admin_token="secret-token", token_source="LETHE_ADMIN_TOKEN")
ROOM = "!r:x"


def _stored(event: object, status: int = 200) -> HttpReply:
    return HttpReply(status, {"event": event})


def test_content_beyond_what_redaction_keeps_is_a_held_original() -> None:
    assert holds_original({"type": "m.room.message", "content": {"body": "x"}})
    assert holds_original({"type": "m.room.encrypted", "content": {"ciphertext": "x"}})
    assert holds_original({"type": "m.reaction", "content": {"m.relates_to": {}}})
    assert not holds_original({"type": "m.room.message", "content": {}})
    assert not holds_original({"type": "m.room.message"})
    assert not holds_original({"type": "m.room.member", "content": {"membership": "join"}})
    assert holds_original({"type": "m.room.member",
                           "content": {"membership": "join", "displayname": "x"}})
    assert not holds_original({"type": "m.room.create", "content": {"anything": 1}})
    assert not holds_original("not an event") and not holds_original(None)


def test_each_answer_of_fetch_event() -> None:
    assert stored_state(_stored({"type": "m.room.message", "content": {"body": "x"}}),
                        ERASURE) is Stored.HELD
    assert stored_state(_stored({"type": "m.room.message", "content": {}}),
                        ERASURE) is Stored.ERASED
    assert stored_state(HttpReply(404, {"errcode": "M_NOT_FOUND"}), ERASURE) is Stored.PURGED
    assert stored_state(HttpReply(502, {}), ERASURE) is Stored.ERROR
    with pytest.raises(TokenRefused) as refused:
        stored_state(HttpReply(401, {"errcode": "M_UNKNOWN_TOKEN"}), ERASURE)
    with pytest.raises(NotAnAdmin) as not_admin:
        stored_state(HttpReply(403, {"errcode": "M_FORBIDDEN"}), ERASURE)
    with pytest.raises(NotAnAdmin, match=r"1\.140"):
        stored_state(HttpReply(404, {"errcode": "M_UNRECOGNIZED"}), ERASURE)
    for error in (refused.value, not_admin.value):
        assert "LETHE_ADMIN_TOKEN" in str(error) and "secret-token" not in str(error)


def _entry(event_id: str, age_ms: int) -> Erasure:
    return Erasure(ROOM, event_id, NOW - age_ms)


def test_ages_and_the_bound() -> None:
    entries = (_entry("$week", 8 * DAY), _entry("$day", 2 * DAY), _entry("$hour", 2 * HOUR),
               _entry("$now", 0), _entry("$gone", 9 * DAY), _entry("$file", 10 * DAY))
    stored = {"$week": Stored.HELD, "$day": Stored.HELD, "$hour": Stored.HELD,
              "$now": Stored.HELD, "$gone": Stored.PURGED, "$file": Stored.ERASED}
    media = {MediaRef("$file", "x", "abc", True): MediaStored.PRESENT,
             MediaRef("$gone", "other", "def", False): MediaStored.REMOTE}
    found = Findings(entries, stored, media)
    assert found.held_by_age(NOW) == [("under an hour", 1), ("1 hour to 1 day", 1),
                                      ("1 to 7 days", 1), ("over 7 days", 1)]
    # A file still stored counts against the bound as an original does.
    assert [e.event_id for e in found.past(7 * DAY, NOW)] == ["$week", "$file"]
    assert [e.event_id for e in found.past(0, NOW)] == ["$week", "$day", "$hour", "$now",
                                                        "$file"]
    assert (found.count(Stored.HELD), found.media_count(MediaStored.REMOTE)) == (4, 1)


def test_what_the_doctor_concludes() -> None:
    sample = [_entry("$old", 3 * HOUR), _entry("$mid", 2 * HOUR), _entry("$new", 1 * HOUR)]
    held_and_erased = {"$old": Stored.ERASED, "$mid": Stored.ERASED, "$new": Stored.HELD}
    status, detail = measure(sample, held_and_erased, 7 * DAY, NOW)
    assert status == WARN
    assert "redacted 1h ago are still stored: the server keeps them at least that long" \
        in detail
    assert "redacted 2h ago are erased already: the server prunes them within 2h" in detail
    status, detail = measure(sample, held_and_erased, 30 * 60_000, NOW)
    assert status == FAIL and "erasure.max_held (30m)" in detail
    purged = dict.fromkeys(held_and_erased, Stored.PURGED)
    status, detail = measure(sample, purged, 7 * DAY, NOW)
    assert status == OK and "3 purged" in detail and "prunes" not in detail


@pytest.mark.parametrize(("args", "says"), [
    (["--bridge"], "go with --erasure"),
    (["--max-held", "1h"], "go with --erasure"),
    (["--erasure", "--grace", "5m"], "--grace does not go with --erasure"),
    (["--erasure", "--max-held", "soon"], "--max-held"),
])
def test_erasure_options_are_checked_before_anything_else(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["-c", "/nonexistent/lethe.yaml", "audit", "!r:x", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
