"""The files of expired messages: held while their message is there, due once it is
gone (Lethe's redaction confirmed, or somebody else's), deleted one at a time after
the redactions, never while another tracked message still holds them, never for a
room Lethe left; remote ones counted; every homeserver answer handled; and nothing
due forgotten across a restart."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import pytest

from bot.engine.engine import EngineConfig
from bot.engine.media import (
    ERROR_RETRY_MS,
    MAX_BACKOFF_MS,
    REFUSED_RETRY_MS,
    MediaOutcome,
    MediaReply,
)
from bot.engine.model import MediaCounts, MediaRef, MediaState, Message, Redaction
from bot.engine.policy import Policy
from bot.engine.store import MIGRATIONS, SCHEMA_VERSION, Database, Store
from bot.matrix.api import HttpReply
from bot.matrix.transport import media_outcome

from .conftest import ALICE, BOB, BOT, ROOM, Harness, eventually

M = 60_000
ROOM_B = "!b:x"


def file(media_id: str, server: str = "x") -> MediaRef:
    return MediaRef(server, media_id)


class FakeMedia:
    """Records deletions; replies are scripted per media id (default: deleted)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._replies: dict[str, deque[MediaReply]] = defaultdict(deque)
        self.gate: asyncio.Event | None = None  # set: deletions wait for it
        self.fail_next = False  # raise once, as a bug would

    def script(self, media_id: str, *replies: MediaReply) -> None:
        self._replies[media_id].extend(replies)

    def deleted(self) -> list[str]:
        return [media_id for _, media_id in self.calls]

    async def delete_media(self, server: str, media_id: str) -> MediaReply:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append((server, media_id))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug")
        queue = self._replies[media_id]
        return queue.popleft() if queue else MediaReply(MediaOutcome.DELETED)


class MediaHarness(Harness):
    __test__ = False

    def __init__(self, database: Database, media: FakeMedia, **kwargs: Any) -> None:
        kwargs.setdefault("config", EngineConfig(BOT, delete_media=True, ledger_ms=M))
        super().__init__(database, **kwargs)
        self.media = media

    async def start(self) -> MediaHarness:
        from bot.engine.engine import Engine

        self.engine = await Engine.open(self.database, self.transport, self.config,
                                        clock=self.clock, media=self.media)
        await self.engine.start()
        await self.settle()
        return self

    async def counts(self, room: str | None = None) -> MediaCounts:
        assert self.engine is not None
        return await self.engine.media_counts(room)

    async def states(self) -> dict[tuple[str, str], int]:
        async with self.store.conn.execute("SELECT event_id, media_id, state FROM media") as cur:
            return {(r[0], r[1]): r[2] for r in await cur.fetchall()}


@pytest.fixture
async def make_media(make_database):
    made: list[MediaHarness] = []

    async def make(media: FakeMedia | None = None, **kwargs: Any) -> MediaHarness:
        harness = MediaHarness(make_database(kwargs.pop("path", None)), media or FakeMedia(),
                               **kwargs)
        made.append(harness)
        return await harness.start()

    yield make
    for harness in reversed(made):
        await harness.close()


async def deleted(h: MediaHarness, *media_ids: str) -> None:
    async def done() -> bool:
        await h.settle()
        return set(media_ids) <= set(h.media.deleted())
    await eventually(done, what=f"{media_ids} deleted")


async def test_files_go_when_their_message_expires_never_before(make_media) -> None:
    h = await make_media()
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$img", ALICE, h.now(), media=(file("img"), file("thumb"))),
                   Message("$text", BOB, h.now()))
    assert await h.counts() == MediaCounts(held=2)

    await h.advance(M - 1)
    assert h.media.calls == [] and await h.counts() == MediaCounts(held=2)
    await h.advance(1)
    await deleted(h, "img", "thumb")
    assert sorted(h.media.calls) == [("x", "img"), ("x", "thumb")]
    assert await h.counts() == MediaCounts(deleted=2)
    assert await h.counts(ROOM) == MediaCounts(deleted=2)
    assert h.engine is not None and h.engine.media_stats is not None
    assert h.engine.media_stats.deleted == 2


async def test_nothing_is_stored_or_deleted_without_media_deletion(make_harness) -> None:
    h = await make_harness()  # no media transport, delete_media off
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$img", ALICE, h.now(), media=(file("img"),)))
    assert h.engine is not None and not h.engine.deletes_media
    assert await h.engine.media_counts() == MediaCounts()
    status = await h.engine.status(ROOM)
    assert status is not None and status.media is None


async def test_a_file_another_held_message_points_at_waits_for_it(make_media) -> None:
    h = await make_media()
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$first", ALICE, h.now(), media=(file("shared"), file("own"))))
    await h.advance(M // 2)
    await h.ingest(Message("$forward", BOB, h.now(), media=(file("shared"),)))
    await h.advance(M // 2)
    await deleted(h, "own")
    assert h.media.deleted() == ["own"]
    assert (await h.states())[("$first", "shared")] == MediaState.DUE

    await h.advance(M // 2)
    await deleted(h, "shared")
    assert h.media.deleted() == ["own", "shared"]  # once, for both messages
    assert set((await h.states()).values()) == {MediaState.DELETED}


async def test_somebody_else_s_redaction_makes_the_files_due(make_media) -> None:
    h = await make_media()
    await h.set_policy(Policy.after_send(60 * M))
    await h.ingest(Message("$img", ALICE, h.now(), media=(file("img"),)))
    await h.ingest(Redaction("$img", "$r", ALICE))  # the sender deleted it
    await deleted(h, "img")
    assert h.transport.redact_calls == []


async def test_a_room_left_keeps_its_held_files(make_media) -> None:
    """Left: its messages stay, so do their files; a file of a message already redacted
    is still deleted."""
    h = await make_media()
    h.media.gate = asyncio.Event()
    await h.set_policy(Policy.after_send(M))
    await h.set_policy(Policy.after_send(M), room=ROOM_B)
    await h.ingest(Message("$gone", ALICE, h.now(), media=(file("gone"),)))
    await h.ingest(Message("$b", ALICE, h.now(), media=(file("b"), file("gone"))), room=ROOM_B)
    await h.advance(M // 2)
    await h.ingest(Message("$stays", ALICE, h.now(), media=(file("stays"),)))
    await h.advance(M // 2)  # $gone and $b expire; their deletion waits at the gate
    assert h.engine is not None
    await h.engine.forget_room(ROOM)
    h.media.gate.set()
    await deleted(h, "gone", "b")
    await h.advance(M)
    assert sorted(h.media.deleted()) == ["b", "gone"]
    assert ("$stays", "stays") not in await h.states()


async def test_a_follower_forgotten_keeps_its_files(make_media) -> None:
    """An edit sent while the policy was off follows its target only when Lethe
    expires it; when somebody else deletes the target, the edit stays, and its file."""
    h = await make_media()
    await h.set_policy(Policy.after_send(60 * M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("m"),)))
    await h.set_policy(Policy.off())
    await h.ingest(Message("$edit", ALICE, h.now(), parent_id="$m", media=(file("edit"),)))
    await h.ingest(Redaction("$m", "$r", ALICE))
    await deleted(h, "m")
    assert await h.states() == {("$m", "m"): MediaState.DELETED}
    await h.advance(120 * M)
    assert h.media.deleted() == ["m"]


async def test_edits_expiring_with_their_target_take_their_files(make_media) -> None:
    h = await make_media()
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("m"),)))
    await h.set_policy(Policy.off())
    await h.ingest(Message("$edit", ALICE, h.now(), parent_id="$m", media=(file("edit"),)))
    await h.advance(M)
    await deleted(h, "m", "edit")


async def test_files_on_other_servers_are_counted_not_requested(make_media) -> None:
    h = await make_media()
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", "@eve:other", h.now(),
                           media=(file("theirs", "other"), file("ours"))))
    await h.advance(M)
    await deleted(h, "ours")
    await eventually(lambda: h.counts(), what="counts")
    assert await h.counts() == MediaCounts(deleted=1, remote=1)
    assert h.media.calls == [("x", "ours")]


async def test_429_waits_and_5xx_backs_off(make_media) -> None:
    h = await make_media()
    h.media.script("a", MediaReply(MediaOutcome.RATE_LIMITED, 5000),
                   MediaReply(MediaOutcome.TRANSIENT, detail="HTTP 502"))
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("a"),)))
    await h.advance(M)
    await eventually(lambda: len(h.media.calls) == 1, what="first try")
    await h.advance(4999)
    assert len(h.media.calls) == 1
    await h.advance(1)
    await eventually(lambda: len(h.media.calls) == 2, what="after retry_after")
    await h.advance(999)
    assert len(h.media.calls) == 2  # backing off: 1 s after the first error
    await h.advance(1)
    await deleted(h, "a")
    assert h.media.deleted() == ["a", "a", "a"]
    assert MAX_BACKOFF_MS == 60_000


async def test_a_refused_token_is_logged_once_and_the_files_wait(
        make_media, caplog: pytest.LogCaptureFixture) -> None:
    h = await make_media()
    refused = MediaReply(MediaOutcome.REFUSED, detail="HTTP 403 M_FORBIDDEN")
    h.media.script("a", refused, refused)
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("a"),), ),
                   Message("$n", ALICE, h.now(), media=(file("b"),)))
    with caplog.at_level(logging.ERROR, logger="bot.engine.media"):
        await h.advance(M)
        await eventually(lambda: len(h.media.calls) == 1, what="first try")
        assert h.engine is not None and h.engine.media_stats is not None
        assert h.engine.media_stats.refused
        await h.advance(REFUSED_RETRY_MS)
        await eventually(lambda: len(h.media.calls) == 2, what="slow retry")
    assert await h.counts() == MediaCounts(due=2)
    errors = [r for r in caplog.records if "refuses to delete media" in r.getMessage()]
    assert len(errors) == 1 and "admin" in errors[0].getMessage()
    await h.advance(REFUSED_RETRY_MS)
    await deleted(h, "a", "b")
    assert not h.engine.media_stats.refused


async def test_a_file_rejected_on_its_own_is_retried_later_others_go_on(make_media) -> None:
    h = await make_media()
    h.media.script("bad", MediaReply(MediaOutcome.REJECTED, detail="HTTP 400 M_UNKNOWN"))
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("bad"), file("good"))))
    await h.advance(M)
    await deleted(h, "good")
    assert await h.counts() == MediaCounts(due=1, deleted=1)
    await h.advance(1000)
    await deleted(h, "bad")


async def test_an_unexpected_error_pauses_deletion_and_loses_nothing(
        make_media, caplog: pytest.LogCaptureFixture) -> None:
    h = await make_media()
    h.media.fail_next = True
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("a"),)))
    await h.advance(M)
    await eventually(lambda: len(h.media.calls) == 1, what="the failing try")
    assert "deleting media failed" in caplog.text
    await h.advance(ERROR_RETRY_MS - 1)
    assert len(h.media.calls) == 1 and await h.counts() == MediaCounts(due=1)
    await h.advance(1)
    await deleted(h, "a")


async def test_deletion_waits_while_redactions_are_backlogged(make_media) -> None:
    """Due redactions go first: while more are due than the workers take, no file is
    deleted; once they are through, it is."""
    h = await make_media(config=EngineConfig(BOT, workers=1, delete_media=True))
    gate = asyncio.Event()

    async def held(*_: str) -> None:
        await gate.wait()

    h.transport.on_redact = held
    await h.set_policy(Policy.after_send(M))
    await h.ingest(*(Message(f"$t{i}", BOB, h.now()) for i in range(5)))
    h.clock.advance(M)
    assert h.engine is not None
    await eventually(lambda: h.engine is not None and h.engine.backlogged, what="backlog")
    await h.ingest(Message("$img", ALICE, h.now(), media=(file("a"),)), settle=False)
    await h.ingest(Redaction("$img", "$r", ALICE), settle=False)  # its sender deleted it
    assert await h.counts() == MediaCounts(due=1)
    await asyncio.sleep(0.1)
    assert h.media.calls == [] and h.engine.backlogged
    gate.set()
    await deleted(h, "a")
    assert len(h.transport.redacted_ids()) == 5


async def test_due_files_survive_a_restart(make_media, db_path: Path) -> None:
    """Stopped between the redaction and the deletion: the next start deletes."""
    first = await make_media()
    first.media.gate = asyncio.Event()  # the deletion never gets through
    await first.set_policy(Policy.after_send(M))
    await first.ingest(Message("$m", ALICE, first.now(), media=(file("a"),)))
    await first.advance(M)
    assert first.transport.redacted_ids() == ["$m"]
    await first.close()

    second = await make_media(clock=first.clock)
    await deleted(second, "a")
    assert await second.counts() == MediaCounts(deleted=1)


async def test_deleted_ids_are_forgotten_after_the_ledger(make_media) -> None:
    h = await make_media()  # ledger: one minute
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("a"),)))
    await h.advance(M)
    await deleted(h, "a")
    await h.advance(2 * 3_600_000)  # the hourly prune
    await eventually(lambda: _empty(h), what="pruned")


async def _empty(h: MediaHarness) -> bool:
    return await h.counts() == MediaCounts()


@pytest.mark.parametrize("status, errcode, outcome", [
    (200, "", MediaOutcome.DELETED),
    (404, "M_NOT_FOUND", MediaOutcome.DELETED),
    (404, "M_UNRECOGNIZED", MediaOutcome.REFUSED),  # no admin API behind this address
    (404, "", MediaOutcome.REFUSED),
    (401, "M_UNKNOWN_TOKEN", MediaOutcome.REFUSED),
    (403, "M_FORBIDDEN", MediaOutcome.REFUSED),
    (429, "M_LIMIT_EXCEEDED", MediaOutcome.RATE_LIMITED),
    (502, "", MediaOutcome.TRANSIENT),
    (400, "M_UNKNOWN", MediaOutcome.REJECTED),
])
def test_the_admin_api_s_answers(status: int, errcode: str, outcome: MediaOutcome) -> None:
    body = {"errcode": errcode} if errcode else {}
    assert media_outcome(HttpReply(status, body, 1500)).outcome is outcome


async def test_schema_5_database_migrates_and_finds_due_files_by_index(db_path: Path) -> None:
    """A database of the release before media deletion (schema 5) gains the media
    table; finding due files walks the partial index of due rows, not the table."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (5)")
        for statement in (s for migration in MIGRATIONS[:5] for s in migration):
            conn.execute(statement)
    conn.close()
    store = await Store.open(db_path)
    try:
        async with store.conn.execute("SELECT version FROM schema_version") as cur:
            assert tuple(await cur.fetchone() or ()) == (SCHEMA_VERSION,)
        assert await store.media_counts() == MediaCounts()
        statements: list[str] = []
        await store.conn.set_trace_callback(statements.append)
        assert await store.due_media(1000, 10) == []
        assert await store.next_media_due() is None
        await store.conn.set_trace_callback(None)
        for sql in statements:
            async with store.conn.execute(f"EXPLAIN QUERY PLAN {sql}") as cur:
                plan = " | ".join(str(row[-1]) for row in await cur.fetchall())
            assert "USING INDEX media_due" in plan and "USING INDEX media_file" in plan, plan
    finally:
        await store.close()


async def test_the_metrics_count_files_by_state(make_media, make_harness, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from bot.metrics import LetheMetrics

    class Front:
        def __init__(self, engine: Any) -> None:
            self.engine = engine
            self.tracked_total = 0
            self.sync_alive = self.scheduler_alive = True

    async def scrape(engine: Any) -> dict[tuple[str, str], float]:
        text = (await LetheMetrics(Front(engine)).render()).decode()
        return {(s.name, s.labels.get("state", "")): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name.startswith("lethe_media")}

    h = await make_media()
    await h.set_policy(Policy.after_send(M))
    await h.ingest(Message("$m", ALICE, h.now(), media=(file("a"), file("b", "other"))))
    await h.advance(M)
    await deleted(h, "a")
    await h.ingest(Message("$n", ALICE, h.now(), media=(file("c"),)))
    assert await scrape(h.engine) == {
        ("lethe_media_deletion", ""): 1, ("lethe_media_refused", ""): 0,
        ("lethe_media_files", "held"): 1, ("lethe_media_files", "due"): 0,
        ("lethe_media_files", "deleted"): 1, ("lethe_media_files", "remote"): 1}

    off = await make_harness(path=tmp_path / "off" / "lethe.db")
    found = await scrape(off.engine)
    assert found[("lethe_media_deletion", "")] == 0
    assert found[("lethe_media_files", "held")] == 0
