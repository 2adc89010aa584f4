"""Durable state in SQLite: schema, numbered migrations and every query the engine runs.

What is stored is only what retention needs: event ids, senders, timeline order,
thread and relation ids, timestamps and due times. Never message content. Rows
of verified redactions are deleted; rooms keep counters only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import aiosqlite

from bot.engine.policy import Mode, Policy, PolicyError, Readers, StatePolicy, policy_from_state
from bot.errors import SetupError

# Event status values.
WAITING = 0  # tracked; due_at set when its deadline is known
IN_FLIGHT = 1  # handed to a redaction worker of this process (reset on start)
PARKED = 2  # due, but the bot may not redact it in this room; resumes when power returns
FAILED = 3  # gave up (the homeserver does not confirm the redaction)
# The homeserver accepted our redaction; waiting for it to come back through the event
# stream (sync or appservice push) until check_at, when the event is fetched instead.
SENT = 4

# How long a committed appservice transaction id is remembered.
APPSERVICE_TXN_KEEP_MS = 7 * 24 * 3600 * 1000

# How long claim_due's list of rooms with due events is reused under a backlog.
_DUE_ROOMS_TTL_MS = 1000

_MODE_CODE = {Mode.OFF: 0, Mode.AFTER_SEND: 1, Mode.AFTER_READ: 2}

# An event's deadline under its policy, from the times Lethe itself bounded (sent_at,
# read_at; see ingest). A retry moves due_at later, so the lag of a redaction is
# measured from this instead (or from due_at when that is earlier: a child due with its
# parent, or an event with no deadline of its own).
_DEADLINE = """coalesce(CASE mode
    WHEN 1 THEN sent_at + timer_ms
    WHEN 2 THEN min(sent_at + cap_ms, coalesce(read_at + timer_ms, sent_at + cap_ms))
    END, due_at)"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the core schema.
    (
        """CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE rooms (
            room_id TEXT PRIMARY KEY,
            lethe_state TEXT,
            beeper_state TEXT,
            policy TEXT NOT NULL DEFAULT '{}',
            policy_sender TEXT,
            can_redact INTEGER NOT NULL DEFAULT 1,
            bot_level INTEGER,
            redact_level INTEGER,
            last_event_id TEXT,
            redacted_count INTEGER NOT NULL DEFAULT 0,
            failed_count INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            seq INTEGER NOT NULL,
            origin_ts INTEGER NOT NULL,
            thread_id TEXT,
            parent_id TEXT,
            mode INTEGER NOT NULL,
            timer_ms INTEGER,
            cap_ms INTEGER,
            readers_any INTEGER NOT NULL DEFAULT 0,
            read_at INTEGER,
            due_at INTEGER,
            status INTEGER NOT NULL DEFAULT 0,
            txn_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX events_due ON events(due_at) WHERE status = 0 AND due_at IS NOT NULL",
        "CREATE INDEX events_room_seq ON events(room_id, seq)",
        "CREATE INDEX events_parent ON events(parent_id) WHERE parent_id IS NOT NULL",
        """CREATE TABLE members (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            join_seq INTEGER NOT NULL,
            PRIMARY KEY (room_id, user_id)
        ) WITHOUT ROWID""",
        # thread: '' for an unthreaded receipt, 'main', or a thread root's event id.
        """CREATE TABLE receipts (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            thread TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (room_id, user_id, thread)
        ) WITHOUT ROWID""",
    ),
    # 2: the appservice bridge: transactions the homeserver pushed and the bridge
    # committed, so a re-sent transaction id is not processed twice.
    (
        """CREATE TABLE appservice_txns (
            txn_id TEXT PRIMARY KEY,
            done_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX appservice_txns_done ON appservice_txns(done_at)",
    ),
    # 3: confirming a redaction by its echo. redaction_id is the id of the redaction
    # event the homeserver returned; check_at is when a SENT row whose echo has not
    # come is fetched instead (due_at keeps the time the event became due).
    (
        "ALTER TABLE events ADD COLUMN redaction_id TEXT",
        "ALTER TABLE events ADD COLUMN check_at INTEGER",
        "CREATE INDEX events_check ON events(check_at) WHERE status = 4",
    ),
    # 4: the timeline position of every event Lethe saw, tracked or not (state events,
    # messages sent while the policy was off, redacted ones), so a receipt on one still
    # counts after a restart. Pruned to what a receipt can still change
    # (reads.prune_positions, Store.cap_positions). events_unread finds a room's oldest
    # unread after_read event for that, and the rows mark_read looks at; its condition
    # is reads.UNREAD, which the queries must repeat verbatim for SQLite to use it.
    (
        """CREATE TABLE positions (
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (room_id, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX positions_room_seq ON positions(room_id, seq)",
        "CREATE INDEX events_unread ON events(room_id, seq) "
        "WHERE mode = 2 AND read_at IS NULL AND status IN (0, 2)",
    ),
    # 5: no remote clock decides a deadline alone. sent_at is origin_ts as Lethe bounds
    # it (ingest.sent_time); deadlines count from it, origin_ts stays what the event says.
    # readers_left counts, per unread after_read event, the required readers who have not
    # read it, so a receipt costs what it newly covers (reads.cover); filled in here the
    # slow way, once.
    (
        "ALTER TABLE events ADD COLUMN sent_at INTEGER",
        "UPDATE events SET sent_at = origin_ts",
        "ALTER TABLE events ADD COLUMN readers_left INTEGER",
        """UPDATE events AS e SET readers_left = (
            SELECT count(*) FROM members m
            WHERE m.room_id = e.room_id AND m.join_seq < e.seq AND m.user_id != e.sender
              AND NOT EXISTS (
                  SELECT 1 FROM receipts r
                  WHERE r.room_id = m.room_id AND r.user_id = m.user_id AND r.seq >= e.seq
                    AND r.thread IN ('', coalesce(e.thread_id, 'main'))))
        WHERE e.mode = 2 AND e.read_at IS NULL AND e.status IN (0, 2)""",
        # claim_due under a backlog: a room's earliest due events.
        "CREATE INDEX events_room_due ON events(room_id, due_at) "
        "WHERE status = 0 AND due_at IS NOT NULL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(SetupError, RuntimeError):
    """The database cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RoomRow:
    room_id: str
    policy: Policy
    policy_sender: str | None
    lethe_state: StatePolicy | None
    beeper_state: StatePolicy | None
    can_redact: bool
    bot_level: int | None
    redact_level: int | None
    last_event_id: str | None
    redacted_count: int
    failed_count: int


@dataclass(frozen=True)
class TrackedEvent:
    """A row to insert: one timeline event under the policy in force when it was sent."""

    event_id: str
    room_id: str
    sender: str
    seq: int
    origin_ts: int
    thread_id: str | None
    parent_id: str | None
    policy: Policy
    read_at: int | None
    due_at: int | None
    sent_at: int | None = None  # origin_ts as Lethe bounds it; None: origin_ts
    readers_left: int | None = None  # unread after_read: required readers yet to read


@dataclass(frozen=True)
class DueEvent:
    event_id: str
    room_id: str
    sender: str
    due_at: int  # when the policy made it due (not a later retry time): lag counts from here
    txn_id: str | None
    attempts: int


class Echo(Enum):
    """What a redaction seen in the event stream did to a tracked row (besides
    confirming one of ours, which returns the row as a ``DueEvent``)."""

    HELD = "held"  # a worker holds the row: the echo is for it to find
    FORGOTTEN = "forgotten"  # somebody else redacted it: the row is dropped
    KEPT = "kept"  # Lethe still fetches or redacts it itself


@dataclass(frozen=True)
class PendingEvent:
    """Ids and times only: what `pending` listings show."""

    event_id: str
    room_id: str
    sender: str
    origin_ts: int
    due_at: int | None
    status: int


def _state_to_json(state: StatePolicy | None) -> str | None:
    if state is None:
        return None
    return json.dumps(
        {
            "policy": state.policy.to_state(),
            "event_type": state.event_type,
            "sender": state.sender,
            "origin_ts": state.origin_ts,
        }
    )


def _state_from_json(raw: str | None) -> StatePolicy | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return StatePolicy(
        policy_from_state(data["policy"]), data["event_type"], data["sender"], data["origin_ts"]
    )


class Store:
    """One aiosqlite connection. Writers hold ``transaction()``; readers need nothing."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._write_lock = asyncio.Lock()
        # Rooms with due events, in turn order, and when they were listed (claim_due).
        self._due_rooms: deque[str] = deque()
        self._due_rooms_at = 0

    # --- opening -----------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Store:
        path = Path(path)
        existed = path.exists()
        if readonly and not existed:
            raise StoreError(f"{path}: no Lethe database here (has the bot run yet?)")
        if existed:
            _check_header(path)
        if not readonly:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not existed:
                # Create it private before SQLite does: its -wal and -shm files take
                # their mode from the database file.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
        try:
            conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from None
        store = cls(conn, path, readonly)
        try:
            await store._prepare(existed)
        except BaseException:
            await conn.close()
            raise
        if not existed:
            os.chmod(path, 0o600)
        return store

    async def _prepare(self, existed: bool) -> None:
        try:
            await self._conn.execute("PRAGMA busy_timeout = 5000")
            # Before switching to WAL, which rewrites the file header: a foreign
            # database must be left exactly as it was.
            version = await self._schema_version(existed)
            if not self.readonly:
                await self._conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a committed "redaction due" must survive power loss, not only a crash.
                await self._conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable SQLite database: {exc}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this Lethe "
                f"understands ({SCHEMA_VERSION}); upgrade Lethe"
            )
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise StoreError(f"{self.path}: schema is out of date; run the bot once to migrate")
            await self._migrate(version)

    async def _schema_version(self, existed: bool) -> int:
        async with self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ) as cur:
            tables = {row[0] for row in await cur.fetchall()}
        if "schema_version" not in tables:
            if tables:
                # Never silently build our schema over somebody else's data.
                raise StoreError(
                    f"{self.path}: exists but is not a Lethe database (tables: "
                    f"{', '.join(sorted(tables))}); move it away or fix data_dir"
                )
            return 0
        async with self._conn.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        if row is None:
            raise StoreError(f"{self.path}: schema_version table is empty; the file is damaged")
        return int(row[0])

    async def _migrate(self, current: int) -> None:
        async with self.transaction() as conn:
            if current == 0:
                await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                await conn.execute("INSERT INTO schema_version VALUES (0)")
            for number in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    await conn.execute(statement)
                await conn.execute("UPDATE schema_version SET version = ?", (number,))

    async def close(self) -> None:
        await self._conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Serialise writers and make each batch atomic."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        async with self._write_lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    @property
    def conn(self) -> aiosqlite.Connection:
        return self._conn

    # --- meta --------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Within a transaction."""
        await self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- appservice transactions -------------------------------------------

    async def appservice_txn_done(self, txn_id: str) -> bool:
        async with self._conn.execute(
            "SELECT 1 FROM appservice_txns WHERE txn_id = ?", (txn_id,)
        ) as cur:
            return await cur.fetchone() is not None

    async def record_appservice_txn(self, txn_id: str, now_ms: int) -> None:
        """Within the transaction that stores the pushed events. A homeserver re-sends
        only transactions it has no answer for, so old ids are dropped after a while."""
        await self._conn.execute(
            "INSERT INTO appservice_txns (txn_id, done_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (txn_id, now_ms),
        )
        await self._conn.execute(
            "DELETE FROM appservice_txns WHERE done_at < ?", (now_ms - APPSERVICE_TXN_KEEP_MS,)
        )

    async def max_seq(self) -> int:
        stored = await self.get_meta("seq")
        return int(stored) if stored is not None else 0

    # --- rooms -------------------------------------------------------------

    async def ensure_room(self, room_id: str) -> None:
        """Within a transaction."""
        await self._conn.execute(
            "INSERT INTO rooms (room_id) VALUES (?) ON CONFLICT DO NOTHING", (room_id,)
        )

    async def get_room(self, room_id: str) -> RoomRow | None:
        async with self._conn.execute(
            "SELECT room_id, policy, policy_sender, lethe_state, beeper_state, can_redact, "
            "bot_level, redact_level, last_event_id, redacted_count, failed_count "
            "FROM rooms WHERE room_id = ?",
            (room_id,),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _room_row(row)

    async def list_rooms(self) -> list[RoomRow]:
        async with self._conn.execute(
            "SELECT room_id, policy, policy_sender, lethe_state, beeper_state, can_redact, "
            "bot_level, redact_level, last_event_id, redacted_count, failed_count "
            "FROM rooms ORDER BY room_id"
        ) as cur:
            return [_room_row(row) for row in await cur.fetchall()]

    async def set_room_policy(
        self,
        room_id: str,
        policy: Policy,
        sender: str | None,
        lethe_state: StatePolicy | None,
        beeper_state: StatePolicy | None,
    ) -> None:
        """Within a transaction."""
        await self._conn.execute(
            "UPDATE rooms SET policy = ?, policy_sender = ?, lethe_state = ?, beeper_state = ? "
            "WHERE room_id = ?",
            (
                json.dumps(policy.to_state()),
                sender,
                _state_to_json(lethe_state),
                _state_to_json(beeper_state),
                room_id,
            ),
        )

    async def set_room_power(
        self, room_id: str, can_redact: bool, bot_level: int | None, redact_level: int | None
    ) -> None:
        """Within a transaction. Regaining power puts parked events back on the schedule."""
        await self._conn.execute(
            "UPDATE rooms SET can_redact = ?, bot_level = ?, redact_level = ? WHERE room_id = ?",
            (int(can_redact), bot_level, redact_level, room_id),
        )
        if can_redact:
            await self._conn.execute(
                "UPDATE events SET status = ? WHERE room_id = ? AND status = ?",
                (WAITING, room_id, PARKED),
            )

    async def set_last_event(self, room_id: str, event_id: str) -> None:
        """Within a transaction."""
        await self._conn.execute(
            "UPDATE rooms SET last_event_id = ? WHERE room_id = ?", (event_id, room_id)
        )

    async def delete_room(self, room_id: str) -> None:
        """Within a transaction: the bot left; nothing there can be redacted by it any more."""
        for table in ("events", "positions", "members", "receipts", "rooms"):
            await self._conn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))

    # --- members -----------------------------------------------------------

    async def add_member(self, room_id: str, user_id: str, join_seq: int) -> None:
        """Within a transaction. A member already present keeps its original join position."""
        await self._conn.execute(
            "INSERT INTO members (room_id, user_id, join_seq) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (room_id, user_id, join_seq),
        )

    async def remove_member(self, room_id: str, user_id: str) -> bool:
        """Within a transaction. Returns whether the user was a counted member."""
        cur = await self._conn.execute(
            "DELETE FROM members WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        await self._conn.execute(
            "DELETE FROM receipts WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        )
        return cur.rowcount > 0

    async def member_count(self, room_id: str) -> int:
        async with self._conn.execute(
            "SELECT count(*) FROM members WHERE room_id = ?", (room_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # --- receipts ----------------------------------------------------------

    async def move_receipt(self, room_id: str, user_id: str, thread: str, seq: int) -> int | None:
        """Within a transaction: move the receipt forward (receipts never move back);
        returns the position it moved from (0 if it is new), or None if it did not move."""
        async with self._conn.execute(
            "SELECT seq FROM receipts WHERE room_id = ? AND user_id = ? AND thread = ?",
            (room_id, user_id, thread),
        ) as cur:
            row = await cur.fetchone()
        old = 0 if row is None else int(row[0])
        if row is not None and seq <= old:
            return None
        await self._conn.execute(
            "INSERT INTO receipts (room_id, user_id, thread, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (room_id, user_id, thread) DO UPDATE SET seq = excluded.seq",
            (room_id, user_id, thread, seq),
        )
        return old

    # --- events ------------------------------------------------------------

    async def insert_events(self, rows: Sequence[TrackedEvent]) -> None:
        """Within a transaction. An event seen twice (backfill overlap) keeps its first row."""
        await self._conn.executemany(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, thread_id, parent_id, "
            "mode, timer_ms, cap_ms, readers_any, read_at, due_at, sent_at, readers_left) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (
                    r.event_id,
                    r.room_id,
                    r.sender,
                    r.seq,
                    r.origin_ts,
                    r.thread_id,
                    r.parent_id,
                    _MODE_CODE[r.policy.mode],
                    r.policy.timer_ms,
                    r.policy.cap_ms,
                    int(r.policy.readers is Readers.ANY),
                    r.read_at,
                    r.due_at,
                    r.origin_ts if r.sent_at is None else r.sent_at,
                    r.readers_left,
                )
                for r in rows
            ],
        )

    async def known_event_ids(
        self, event_ids: Iterable[str], *, room_id: str | None = None
    ) -> set[str]:
        """Which of ``event_ids`` are tracked (in ``room_id`` only, if given: a relation
        resolves within its own room, whatever id it names)."""
        ids = list(event_ids)
        known: set[str] = set()
        in_room = "" if room_id is None else " AND room_id = ?"
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            args = chunk if room_id is None else [*chunk, room_id]
            async with self._conn.execute(
                f"SELECT event_id FROM events WHERE event_id IN ({marks}){in_room}", args
            ) as cur:
                known.update(row[0] for row in await cur.fetchall())
        return known

    async def event_seq(self, room_id: str, event_id: str) -> int | None:
        """The timeline position of an event Lethe saw in the room, if it still keeps it:
        in ``positions``, or for a tracked event also in ``events`` (rows from before
        migration 4, or older than the per-room cap)."""
        async with self._conn.execute(
            "SELECT seq FROM positions WHERE room_id = ? AND event_id = ? "
            "UNION ALL SELECT seq FROM events WHERE event_id = ? AND room_id = ? LIMIT 1",
            (room_id, event_id, event_id, room_id),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    # --- positions ---------------------------------------------------------

    async def insert_positions(self, rows: Sequence[tuple[str, str, int]]) -> None:
        """Within a transaction: (room_id, event_id, seq) of timeline events. An event
        seen twice (backfill overlap) keeps its first position, as in ``events``."""
        await self._conn.executemany(
            "INSERT INTO positions (room_id, event_id, seq) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            rows,
        )

    async def cap_positions(self, room_id: str, keep: int) -> int:
        """Within a transaction: keep only the room's newest ``keep`` positions. Costs a
        walk over ``keep`` index entries, so callers run it now and then. Returns how
        many went."""
        cur = await self._conn.execute(
            "DELETE FROM positions WHERE room_id = :room AND seq < ("
            "SELECT seq FROM positions WHERE room_id = :room "
            "ORDER BY seq DESC LIMIT 1 OFFSET :skip)",
            {"room": room_id, "skip": keep - 1},
        )
        return cur.rowcount

    async def redaction_seen(
        self, room_id: str, target: str, redaction_id: str | None, sender: str | None,
        now_ms: int, *, trust_echo: bool = True,
    ) -> Echo | DueEvent | None:
        """Within a transaction: the event stream shows a redaction of ``target``.

        Our own redaction coming back to a SENT row (its id is the one the homeserver
        returned) is proof the homeserver stored it: unless echoes are distrusted, the
        row is done and returned for counting. While a worker still holds the row, the
        echo is only reported (``Echo.HELD``), for the worker to find. A row Lethe has
        sent a redaction for is kept otherwise: its fetch (at ``check_at``, or first
        thing on the retry) decides, and counts it. Anybody else's redaction makes a
        row moot, unless its sender is on another server than the event's sender: a
        homeserver applies such a redaction only if its sender has power, which the
        event stream does not show, so Lethe keeps the event and redacts it when due.

        Only Lethe's own expiry takes the target's edits, reactions and poll responses
        along (``_finish``): a redaction by somebody else (a sender deleting their own
        poll, say) never makes other people's events due."""
        async with self._conn.execute(
            f"SELECT status, redaction_id, sender, min(due_at, {_DEADLINE}), txn_id, attempts "
            "FROM events WHERE event_id = ? AND room_id = ?",
            (target, room_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        status, ours, event_sender, deadline, txn_id, attempts = row
        if status == IN_FLIGHT:
            return Echo.HELD
        if status == SENT and trust_echo and redaction_id is not None and redaction_id == ours:
            await self._finish(room_id, target, now_ms)
            return DueEvent(target, room_id, event_sender, deadline, txn_id, attempts)
        if status == SENT or txn_id is not None:
            return Echo.KEPT
        if sender is not None and _server(sender) != _server(event_sender):
            return Echo.KEPT
        await self._conn.execute(
            "DELETE FROM events WHERE event_id = ? AND room_id = ?", (target, room_id)
        )
        await self._drop_followers(room_id, target)
        return Echo.FORGOTTEN

    async def _cascade(self, room_id: str, parent_id: str, now_ms: int) -> None:
        """Lethe expired ``parent_id``: its edits, reactions and poll responses are due now.

        Rows stored before thread replies became messages of their own name their thread
        root as parent too (``thread_id = parent_id``; a relation has one type, so no
        newer row looks like that): they keep their own deadline instead."""
        await self._conn.execute(
            "UPDATE events SET due_at = min(coalesce(due_at, ?), ?) "
            "WHERE parent_id = ? AND room_id = ? AND status IN (?, ?) "
            "AND thread_id IS NOT parent_id",
            (now_ms, now_ms, parent_id, room_id, WAITING, PARKED),
        )
        await self._drop_followers(room_id, parent_id)

    async def _drop_followers(self, room_id: str, parent_id: str) -> None:
        """``parent_id`` is gone without taking its children along: those tracked only to
        follow it (sent while the policy was off, so no deadline of their own), and
        theirs in turn, are forgotten rather than left waiting forever; the others keep
        their own deadline."""
        await self._conn.execute(
            "WITH RECURSIVE followers(event_id) AS ("
            " SELECT event_id FROM events"
            " WHERE parent_id = :parent AND room_id = :room AND due_at IS NULL"
            " AND status = :waiting"
            " UNION SELECT e.event_id FROM events AS e JOIN followers AS f"
            " ON e.parent_id = f.event_id"
            " WHERE e.room_id = :room AND e.due_at IS NULL AND e.status = :waiting) "
            "DELETE FROM events WHERE room_id = :room "
            "AND event_id IN (SELECT event_id FROM followers)",
            {"parent": parent_id, "room": room_id, "waiting": WAITING},
        )

    async def mark_sent(self, event_id: str, redaction_id: str, check_at: int) -> None:
        """The homeserver accepted the redaction: wait for its echo until ``check_at``."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET status = ?, redaction_id = ?, check_at = ? "
                "WHERE event_id = ? AND status = ?",
                (SENT, redaction_id, check_at, event_id, IN_FLIGHT),
            )

    async def reset_in_flight(self) -> None:
        """On start: whatever a previous process had in flight is due again."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET status = ? WHERE status = ?", (WAITING, IN_FLIGHT)
            )

    async def next_due(self) -> int | None:
        async with self._conn.execute(
            "SELECT min(at) FROM ("
            "SELECT min(due_at) AS at FROM events WHERE status = 0 AND due_at IS NOT NULL "
            "UNION ALL SELECT min(check_at) FROM events WHERE status = 4)"
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def claim_due(self, now_ms: int, limit: int) -> list[DueEvent]:
        """Mark up to ``limit`` due events in flight and return them: SENT ones whose echo
        is overdue, and events whose time has come, earliest first while they all fit.
        When more are due than fit (a backlog), rooms take turns (``_claim_fairly``), so
        one room's flood cannot hold back the others."""
        columns = f"event_id, room_id, sender, min(due_at, {_DEADLINE}), txn_id, attempts"
        async with self.transaction() as conn:
            # Two queries, each along its own index, rather than one OR the planner
            # would answer by sorting every due row.
            async with conn.execute(
                f"SELECT {columns} FROM events WHERE status = 4 AND check_at <= ? "
                "ORDER BY check_at LIMIT ?",
                (now_ms, limit),
            ) as cur:
                rows = [DueEvent(*row) for row in await cur.fetchall()]
            async with conn.execute(
                f"SELECT {columns} FROM events "
                "WHERE status = 0 AND due_at IS NOT NULL AND due_at <= ? "
                "ORDER BY due_at LIMIT ?",
                (now_ms, limit - len(rows) + 1),
            ) as cur:
                due = [DueEvent(*row) for row in await cur.fetchall()]
            if len(rows) + len(due) <= limit:
                rows += due
            else:
                rows += await self._claim_fairly(conn, columns, now_ms, limit - len(rows))
            await conn.executemany(
                "UPDATE events SET status = ? WHERE event_id = ?",
                [(IN_FLIGHT, row.event_id) for row in rows],
            )
        return rows

    async def _claim_fairly(
        self, conn: aiosqlite.Connection, columns: str, now_ms: int, limit: int
    ) -> list[DueEvent]:
        """Up to ``limit`` due events, the rooms with due events taking turns: each gives
        its earliest, a share at a time, starting after the room served last. The rooms
        are listed by one walk over the due events, at most once a second (a room that
        comes due meanwhile waits at most that long for its turn); each share is one
        seek in events_room_due."""
        if not self._due_rooms or not 0 <= now_ms - self._due_rooms_at < _DUE_ROOMS_TTL_MS:
            async with conn.execute(
                "SELECT DISTINCT room_id FROM events "
                "WHERE status = 0 AND due_at IS NOT NULL AND due_at <= ?",
                (now_ms,),
            ) as cur:
                self._due_rooms = deque(row[0] for row in await cur.fetchall())
            self._due_rooms_at = now_ms
        picked: list[DueEvent] = []
        taken: set[str] = set()
        while len(picked) < limit and self._due_rooms:
            share = max(1, (limit - len(picked)) // len(self._due_rooms))
            for _ in range(len(self._due_rooms)):
                if len(picked) >= limit:
                    break
                room_id = self._due_rooms[0]
                self._due_rooms.rotate(-1)
                async with conn.execute(
                    f"SELECT {columns} FROM events INDEXED BY events_room_due "
                    "WHERE room_id = ? AND status = 0 AND due_at IS NOT NULL AND due_at <= ? "
                    "ORDER BY due_at LIMIT ?",
                    (room_id, now_ms, share + len(taken)),
                ) as cur:
                    found = [DueEvent(*row) for row in await cur.fetchall()]
                fresh = [e for e in found if e.event_id not in taken][:share]
                if not fresh:
                    self._due_rooms.remove(room_id)
                    continue
                picked += fresh
                taken.update(e.event_id for e in fresh)
        return picked[:limit]

    async def record_txn(self, event_id: str, txn_id: str) -> None:
        """Persist the transaction id before the request, so a retry after a crash reuses it."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET txn_id = ?, attempts = attempts + 1 WHERE event_id = ?",
                (txn_id, event_id),
            )

    async def finish_redacted(self, room_id: str, event_id: str, now_ms: int) -> bool:
        """Verified gone: drop the row, count it, and let its edits, reactions and poll
        responses follow at once. False if the row was already gone."""
        async with self.transaction():
            return await self._finish(room_id, event_id, now_ms)

    async def _finish(self, room_id: str, event_id: str, now_ms: int) -> bool:
        cur = await self._conn.execute(
            "DELETE FROM events WHERE event_id = ? AND room_id = ?", (event_id, room_id)
        )
        if cur.rowcount:
            await self._conn.execute(
                "UPDATE rooms SET redacted_count = redacted_count + 1 WHERE room_id = ?",
                (room_id,),
            )
        await self._cascade(room_id, event_id, now_ms)
        return cur.rowcount > 0

    async def reschedule(self, event_id: str, due_at: int) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET status = ?, due_at = ?, redaction_id = NULL "
                "WHERE event_id = ?",
                (WAITING, due_at, event_id),
            )

    async def park(self, room_id: str, event_id: str) -> None:
        """No power to redact here: keep it due, out of the loop, until power returns."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET status = ?, redaction_id = NULL WHERE event_id = ?",
                (PARKED, event_id),
            )
            await conn.execute(
                "UPDATE rooms SET can_redact = 0 WHERE room_id = ?", (room_id,)
            )

    async def fail(self, room_id: str, event_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE events SET status = ?, redaction_id = NULL WHERE event_id = ?",
                (FAILED, event_id),
            )
            await conn.execute(
                "UPDATE rooms SET failed_count = failed_count + 1 WHERE room_id = ?", (room_id,)
            )

    async def pending_count(self, room_id: str | None = None) -> int:
        sql = "SELECT count(*) FROM events WHERE status != 3"
        args: tuple[Any, ...] = ()
        if room_id is not None:
            sql += " AND room_id = ?"
            args = (room_id,)
        async with self._conn.execute(sql, args) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def pending(self, room_id: str | None = None, limit: int = 1000) -> list[PendingEvent]:
        sql = "SELECT event_id, room_id, sender, origin_ts, due_at, status FROM events"
        args: list[Any] = []
        if room_id is not None:
            sql += " WHERE room_id = ?"
            args.append(room_id)
        sql += " ORDER BY due_at IS NULL, due_at, seq LIMIT ?"
        args.append(limit)
        async with self._conn.execute(sql, args) as cur:
            return [PendingEvent(*row) for row in await cur.fetchall()]


_SQLITE_HEADER = b"SQLite format 3\x00"


def _server(user_id: str) -> str:
    return user_id.partition(":")[2]


def _check_header(path: Path) -> None:
    """SQLite takes a short non-database file for an empty database and writes over it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the database: {exc}") from None
    if head and head != _SQLITE_HEADER:
        raise StoreError(f"{path}: not a SQLite database; move it away or fix data_dir")


def _room_row(row: sqlite3.Row | tuple[Any, ...]) -> RoomRow:
    try:
        policy = policy_from_state(json.loads(row[1]))
    except (PolicyError, ValueError):
        policy = Policy.off()
    return RoomRow(
        room_id=row[0],
        policy=policy,
        policy_sender=row[2],
        lethe_state=_state_from_json(row[3]),
        beeper_state=_state_from_json(row[4]),
        can_redact=bool(row[5]),
        bot_level=row[6],
        redact_level=row[7],
        last_event_id=row[8],
        redacted_count=row[9],
        failed_count=row[10],
    )
