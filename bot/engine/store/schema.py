"""The SQLite schema, as numbered migrations: a database at version N has had the
first N applied, each in the transaction that records N. Never edit a migration
that has shipped; add the next one."""

from __future__ import annotations

from bot.engine.store.sql import (
    AFTER_READ,
    DELAY_ARMED,
    DELAY_ARMING,
    DELAY_NONE,
    IN_FLIGHT,
    MEDIA_DUE,
    MEDIA_HELD,
    PARKED,
    SENT,
    WAITING,
)

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
        f"""CREATE TABLE events (
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
            status INTEGER NOT NULL DEFAULT {WAITING},
            txn_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        f"CREATE INDEX events_due ON events(due_at) WHERE status = {WAITING} "
        "AND due_at IS NOT NULL",
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
        f"CREATE INDEX events_check ON events(check_at) WHERE status = {SENT}",
    ),
    # 4: the timeline position of every event Lethe saw, tracked or not (state events,
    # messages sent while the policy was off, redacted ones), so a receipt on one still
    # counts after a restart. Pruned to what a receipt can still change
    # (receipts.prune_positions, cap_positions). events_unread finds a room's oldest
    # unread after_read event for that, and the rows mark_read looks at; its condition
    # is sql.UNREAD, which the queries must repeat verbatim for SQLite to use it.
    (
        """CREATE TABLE positions (
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (room_id, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX positions_room_seq ON positions(room_id, seq)",
        "CREATE INDEX events_unread ON events(room_id, seq) "
        f"WHERE mode = {AFTER_READ} AND read_at IS NULL AND status IN ({WAITING}, {PARKED})",
    ),
    # 5: no remote clock decides a deadline alone. sent_at is origin_ts as Lethe bounds
    # it (sendtimes.sent_time); deadlines count from it, origin_ts stays what the event says.
    # readers_left counts, per unread after_read event, the required readers who have not
    # read it, so a receipt costs what it newly covers (receipts.cover); filled in here
    # the slow way, once.
    (
        "ALTER TABLE events ADD COLUMN sent_at INTEGER",
        "UPDATE events SET sent_at = origin_ts",
        "ALTER TABLE events ADD COLUMN readers_left INTEGER",
        f"""UPDATE events AS e SET readers_left = (
            SELECT count(*) FROM members m
            WHERE m.room_id = e.room_id AND m.join_seq < e.seq AND m.user_id != e.sender
              AND NOT EXISTS (
                  SELECT 1 FROM receipts r
                  WHERE r.room_id = m.room_id AND r.user_id = m.user_id AND r.seq >= e.seq
                    AND r.thread IN ('', coalesce(e.thread_id, 'main'))))
        WHERE e.mode = {AFTER_READ} AND e.read_at IS NULL AND e.status IN ({WAITING}, {PARKED})""",
        # claim_due under a backlog: a room's earliest due events.
        "CREATE INDEX events_room_due ON events(room_id, due_at) "
        f"WHERE status = {WAITING} AND due_at IS NOT NULL",
    ),
    # 6: the files (mxc ids, never content) of tracked messages, kept only while media
    # deletion is on (store/media.py). A file is deleted once every tracked message
    # pointing at it is gone; state is a MediaState, changed_at when it became due or
    # was settled (deleted rows are kept for audits until erasure.ledger), retry_at
    # when a due file is tried (next).
    (
        f"""CREATE TABLE media (
            event_id TEXT NOT NULL,
            server TEXT NOT NULL,
            media_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            state INTEGER NOT NULL DEFAULT {MEDIA_HELD},
            changed_at INTEGER,
            retry_at INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (event_id, server, media_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX media_file ON media(server, media_id)",
        f"CREATE INDEX media_due ON media(retry_at) WHERE state = {MEDIA_DUE}",
        "CREATE INDEX media_room ON media(room_id, state)",
    ),
    # 7: the erasure ledger: every redaction of Lethe's own, confirmed (finish_redacted),
    # by event id and time only, so `lethe audit --erasure` can ask the homeserver
    # whether it still stores the original. Pruned after erasure.ledger (engine/ledger.py).
    (
        """CREATE TABLE erasures (
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            redacted_at INTEGER NOT NULL,
            PRIMARY KEY (room_id, event_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX erasures_at ON erasures(redacted_at)",
    ),
    # 8: delayed redactions (MSC4140 delayed events, MSC4169 redactions through /send): the
    # homeserver redacts an event at its deadline itself, Lethe running or not
    # (bot/engine/delayed.py). delay_state is sql.DELAY_*; delay_txn the transaction id
    # of the request scheduling it, stored before it is sent; delay_id what the
    # homeserver answered; delay_by the account it was scheduled as; delay_at when it
    # fires. delay_cancels: the delayed redactions still to cancel, kept until the
    # homeserver confirmed (delay_id NULL: a request whose answer was lost, found by its
    # target in the account's list). The indexes' conditions are sql.UNARMED, DELAYED
    # and STALE, written out here so that this migration never changes.
    (
        f"ALTER TABLE events ADD COLUMN delay_state INTEGER NOT NULL DEFAULT {DELAY_NONE}",
        "ALTER TABLE events ADD COLUMN delay_txn TEXT",
        "ALTER TABLE events ADD COLUMN delay_id TEXT",
        "ALTER TABLE events ADD COLUMN delay_by TEXT",
        "ALTER TABLE events ADD COLUMN delay_at INTEGER",
        "CREATE INDEX events_unarmed ON events(due_at) "
        f"WHERE status = {WAITING} AND due_at IS NOT NULL AND delay_state = {DELAY_NONE}",
        "CREATE INDEX events_delayed ON events(delay_by, delay_at) "
        f"WHERE delay_state IN ({DELAY_ARMING}, {DELAY_ARMED})",
        "CREATE INDEX events_stale ON events(due_at) "
        f"WHERE delay_state = {DELAY_ARMED} AND due_at < delay_at - 1000",
        """CREATE TABLE delay_cancels (
            id INTEGER PRIMARY KEY,
            delay_id TEXT,
            user_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            target TEXT NOT NULL,
            not_before INTEGER NOT NULL DEFAULT 0,
            tries INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # 9: whether an event's deadline is its own (msgtimer.Own: its content's timer, or
    # `!lethe expire`), for `lethe pending`.
    (
        "ALTER TABLE events ADD COLUMN own INTEGER NOT NULL DEFAULT 0",
    ),
    # 10: held events: the bot's pinned policy notices, exempt from expiry while pinned
    # (bot/engine/holds.py). mode NULL: held before the sync that brings the event; its
    # echo fills in the rule it was sent under, which releasing it puts back in force.
    (
        """CREATE TABLE held (
            event_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            sender TEXT,
            seq INTEGER,
            origin_ts INTEGER,
            sent_at INTEGER,
            thread_id TEXT,
            mode INTEGER,
            timer_ms INTEGER,
            cap_ms INTEGER,
            readers_any INTEGER
        )""",
        "CREATE INDEX held_room ON held(room_id)",
    ),
    # 11: start resets what a previous process had in flight (reset_in_flight); without
    # an index that read every row (2 s at 10 M events). In flight are a few rows at most.
    (
        f"CREATE INDEX events_in_flight ON events(status) WHERE status = {IN_FLIGHT}",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
