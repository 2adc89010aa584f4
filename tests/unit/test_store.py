"""Opening, migrating and protecting the store: on both backends where the behaviour
is the store's, on SQLite only where it is the file's (modes, header, planner)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bot.devtools.localpostgres import LocalPostgres
from bot.engine.model import EventStatus, TrackedEvent
from bot.engine.policy import Policy
from bot.engine.store import MIGRATIONS, SCHEMA_VERSION, Database, Store, StoreError
from bot.engine.store.interface import StoreBackend
from bot.engine.store.opening import database_unavailable, open_store
from tests.conftest import pg_database


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _old_database(path: Path, version: int) -> sqlite3.Connection:
    """A database as release ``version`` left it (its migrations, no rows): the
    caller inserts rows and closes it, then opens it with the Store to migrate it."""
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for statement in (s for migration in MIGRATIONS[:version] for s in migration):
        conn.execute(statement)
    conn.execute("INSERT INTO rooms (room_id) VALUES ('!r:x')")
    return conn


async def _store_tables(store: StoreBackend) -> set[str]:
    sql = ("SELECT name FROM sqlite_master WHERE type='table'" if store.database.is_sqlite
           else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    async with store.conn.execute(sql) as cur:
        return {r[0] for r in await cur.fetchall()}


async def _run(store: StoreBackend, sql: str, params: tuple[object, ...] = ()) -> None:
    """One statement outside the store's transactions, committed (a test's poke)."""
    await store.conn.execute(sql, params)
    if store.database.is_sqlite:
        await store.conn.commit()


def _no_password(database: Database, err: BaseException) -> None:
    password = urlsplit(database.url or "").password
    assert not password or password not in str(err)


async def _migrated(store: Store) -> None:
    async with store.conn.execute("SELECT version FROM schema_version") as cur:
        assert [tuple(r) for r in await cur.fetchall()] == [(SCHEMA_VERSION,)]


async def _plan(store: Store, sql: str, params: tuple[object, ...] = ()) -> str:
    async with store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params) as cur:
        return " | ".join(str(row[-1]) for row in await cur.fetchall())


async def test_new_database_gets_schema_version(database: Database) -> None:
    store = await open_store(database)
    try:
        async with store.conn.execute("SELECT version FROM schema_version") as cur:
            rows = await cur.fetchall()
        assert [tuple(r) for r in rows] == [(SCHEMA_VERSION,)]
        assert {"schema_version", "meta", "rooms", "events", "members",
                "receipts"} <= await _store_tables(store)
    finally:
        await store.close()


async def test_reopen_keeps_data_and_does_not_migrate_again(database: Database) -> None:
    store = await open_store(database)
    async with store.transaction() as tx:
        await tx.ensure_room("!r:x")
        await tx.set_room_policy("!r:x", Policy.after_send(60_000), "@a:x", None, None)
        await tx.set_meta("sync_token", "s42")
    await store.close()

    store = await open_store(database)
    try:
        room = await store.get_room("!r:x")
        assert room is not None
        assert room.policy == Policy.after_send(60_000)
        assert room.policy_sender == "@a:x"
        assert await store.get_meta("sync_token") == "s42"
        async with store.conn.execute("SELECT count(*), max(version) FROM schema_version") as cur:
            assert tuple(await cur.fetchone()) == (1, SCHEMA_VERSION)
    finally:
        await store.close()


async def test_transaction_rolls_back_on_error(database: Database) -> None:
    store = await open_store(database)
    try:
        async with store.transaction() as tx:
            await tx.ensure_room("!r:x")
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.set_meta("k", "v")
                await tx.set_room_policy("!r:x", Policy.after_send(60_000), "@a:x", None, None)
                raise RuntimeError("boom")
        # Nothing of the failed batch stayed: neither write, on either backend.
        assert await store.get_meta("k") is None
        room = await store.get_room("!r:x")
        assert room is not None and room.policy == Policy.off() and room.policy_sender is None
        async with store.transaction() as tx:  # the lock was released, no transaction open
            await tx.set_meta("k", "w")
        with pytest.raises(StoreError):  # a transaction is only valid inside its block
            await tx.set_meta("k", "x")
        assert await store.get_meta("k") == "w"
    finally:
        await store.close()


async def test_transaction_failing_in_the_database_rolls_back_whole(database: Database) -> None:
    """A statement the database refuses (here a duplicate key) ends the batch, and
    the writes before it in the same batch are gone too; the store writes on after."""
    store = await open_store(database)
    try:
        with pytest.raises(Exception) as err:
            async with store.transaction() as tx:
                await tx.set_meta("k", "v")
                await tx.ensure_room("!r:x")
                await store.conn.execute("INSERT INTO rooms (room_id) VALUES ('!r:x')")
        assert not isinstance(err.value, StoreError)
        assert await store.get_meta("k") is None
        assert await store.get_room("!r:x") is None
        async with store.transaction() as tx:
            await tx.set_meta("k", "w")
        assert await store.get_meta("k") == "w"
    finally:
        await store.close()


async def test_foreign_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO accounts (name) VALUES ('precious')")
    conn.close()
    before = path.read_bytes()
    mode_before = _mode(path)

    with pytest.raises(StoreError) as err:
        await Store.open(path)
    assert str(path) in str(err.value)
    assert "accounts" in str(err.value)

    assert path.read_bytes() == before, "the foreign database was modified"
    assert _mode(path) == mode_before
    assert _names(tmp_path) == ["other.db"]
    assert _tables(path) == {"accounts"}


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, just some text " * 50, b"x", b"SQLite format 2\x00" + b"\x00" * 200],
)
async def test_garbage_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lethe.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as err:
        await Store.open(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == content


async def test_readonly_open_of_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.db"
    with pytest.raises(StoreError) as err:
        await Store.open(path, readonly=True)
    assert str(path) in str(err.value)
    assert not path.exists()


async def test_readonly_store_reads_but_refuses_writes(database: Database) -> None:
    store = await open_store(database)
    async with store.transaction() as tx:
        await tx.set_meta("sync_token", "s1")
    await store.close()

    ro = await open_store(database, readonly=True)
    try:
        assert await ro.get_meta("sync_token") == "s1"
        with pytest.raises(StoreError):
            async with ro.transaction():
                pass
        # Not just the store's own check: the connection itself cannot write.
        with pytest.raises(Exception):  # noqa: B017 - each backend's own error
            await _run(ro, "UPDATE meta SET value = 'forged' WHERE key = 'sync_token'")
        assert await ro.get_meta("sync_token") == "s1"
    finally:
        await ro.close()


async def test_newer_schema_is_refused(database: Database) -> None:
    store = await open_store(database)
    await _run(store, "UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    await store.close()
    with pytest.raises(StoreError, match="newer") as err:
        await open_store(database)
    _no_password(database, err.value)
    with pytest.raises(StoreError, match="newer"):
        await open_store(database, readonly=True)


async def test_readonly_open_of_empty_postgres_schema_is_refused(postgres: LocalPostgres) -> None:
    database = pg_database(postgres)
    with pytest.raises(StoreError, match="no Lethe database") as err:
        await open_store(database, readonly=True)
    _no_password(database, err.value)
    schema = database.url.rsplit("search_path=", 1)[1]
    tables = postgres.psql(
        f"SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'", "lethe_tests")
    assert tables.strip() == "0"


async def test_foreign_postgres_schema_is_refused_and_left_alone(postgres: LocalPostgres) -> None:
    database = pg_database(postgres)
    schema = database.url.rsplit("search_path=", 1)[1]
    postgres.psql(f"CREATE TABLE {schema}.accounts (id serial PRIMARY KEY, name text); "
                  f"INSERT INTO {schema}.accounts (name) VALUES ('precious')", "lethe_tests")
    with pytest.raises(StoreError) as err:
        await open_store(database)
    assert "accounts" in str(err.value) and "not a Lethe database" in str(err.value)
    _no_password(database, err.value)
    tables = postgres.psql(
        f"SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = '{schema}'",
        "lethe_tests")
    assert tables.strip() == "accounts"
    assert postgres.psql(f"SELECT name FROM {schema}.accounts", "lethe_tests").strip() == "precious"


async def test_a_transaction_whose_connection_went_is_never_committed_in_part(
    postgres: LocalPostgres,
) -> None:
    """PostgreSQL: the connection dies between two writes of one transaction, and the
    driver notices before the second. That write must fail (the whole transaction is
    then rolled back and retried by its owner), not run on a new connection by itself
    and commit alone."""
    database = pg_database(postgres)
    store = await open_store(database)
    try:
        with pytest.raises(Exception) as lost:
            async with store.transaction() as tx:
                await tx.set_meta("first", "1")
                raw = await store.conn.raw()  # type: ignore[attr-defined]
                pid = await raw.fetchval("SELECT pg_backend_pid()")
                postgres.psql(f"SELECT pg_terminate_backend({pid})", "lethe_tests")
                for _ in range(500):  # until the driver has seen it go
                    if raw.is_closed():
                        break
                    await asyncio.sleep(0.01)
                assert raw.is_closed(), "the driver never saw the connection go"
                await tx.set_meta("second", "2")
        assert database_unavailable(lost.value), lost.value
        # The next transaction gets a new connection, and sees neither write.
        assert await store.get_meta("first") is None
        assert await store.get_meta("second") is None
        async with store.transaction() as tx:
            await tx.set_meta("after", "3")
        assert await store.get_meta("after") == "3"
    finally:
        await store.close()


@pytest.mark.sqlite_only
async def test_database_files_are_private(db_path: Path) -> None:
    store = await Store.open(db_path)
    try:
        async with store.transaction() as tx:
            await tx.set_meta("k", "v")
        assert _mode(db_path) == 0o600
        # The WAL and shared-memory files hold the same data while the store is open.
        for suffix in ("-wal", "-shm"):
            side = db_path.with_name(db_path.name + suffix)
            if side.exists():
                assert _mode(side) == 0o600, side.name
        assert _mode(db_path.parent) & 0o077 == 0
    finally:
        await store.close()


@pytest.mark.sqlite_only
async def test_existing_file_mode_is_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "lethe.db"
    store = await Store.open(path)
    await store.close()
    os.chmod(path, 0o640)
    store = await Store.open(path)
    await store.close()
    assert _mode(path) == 0o640


async def test_schema_2_database_migrates_and_keeps_its_due_index(db_path: Path) -> None:
    """A database of the release before echo confirmation (schema 2): it gains
    ``redaction_id`` and ``check_at``, keeps its rows, and the due queries, which now
    cover SENT rows too, find them through the partial indexes, not a table scan."""
    with _old_database(db_path, 2) as conn:
        conn.execute(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
            "due_at, status) VALUES ('$m1', '!r:x', '@a:x', 1, 1000, 1, 60000, 61000, ?)",
            (EventStatus.WAITING,),
        )
    conn.close()

    store = await Store.open(db_path)
    try:
        await _migrated(store)
        async with store.conn.execute(
            "SELECT event_id, status, due_at, redaction_id FROM events"
        ) as cur:
            assert [tuple(r) for r in await cur.fetchall()] == [
                ("$m1", EventStatus.WAITING, 61000, None)]

        # The statements the store really runs, with their parameters filled in.
        statements: list[str] = []
        await store.conn.set_trace_callback(statements.append)
        assert await store.next_due() == 61000
        async with store.transaction() as tx:
            assert [e.event_id for e in await tx.claim_due(61000, 8)] == ["$m1"]
        await store.conn.set_trace_callback(None)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 3, statements  # next_due; claim_due: due, then overdue SENT
        for sql in selects:
            plan = await _plan(store, sql)
            assert "SCAN events" not in plan, (sql, plan)
            wanted = ["events_due", "events_check"] if "UNION" in sql else (
                ["events_check"] if "status = 4" in sql else ["events_due"])
            for index in wanted:
                assert f"INDEX {index}" in plan, (sql, plan)
    finally:
        await store.close()


async def test_schema_3_database_migrates_and_finds_positions_of_tracked_events(
    db_path: Path,
) -> None:
    """A database of the release before stored positions (schema 3): it gains the
    ``positions`` table, a receipt on an event tracked before the upgrade still finds
    its position (in ``events``), and pruning and marking read find the unread events
    through the new partial index, not a scan of the room's events."""
    with _old_database(db_path, 3) as conn:
        conn.execute(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
            "cap_ms, due_at, status) VALUES ('$m1', '!r:x', '@a:x', 7, 1000, 2, 60000, "
            "600000, 601000, ?)",
            (EventStatus.WAITING,),
        )
    conn.close()

    store = await Store.open(db_path)
    try:
        await _migrated(store)
        assert "positions" in _tables(db_path)
        assert await store.event_seq("!r:x", "$m1") == 7
        assert await store.event_seq("!r:x", "$never-seen") is None

        statements: list[str] = []
        await store.conn.set_trace_callback(statements.append)
        async with store.transaction() as tx:
            await tx.mark_read("!r:x", 2000, 7)
            assert await tx.prune_positions("!r:x") == 0
        await store.conn.set_trace_callback(None)
        writes = [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "DELETE"))]
        assert len(writes) == 2, statements
        for sql in writes:
            plan = await _plan(store, sql)
            assert "INDEX events_unread" in plan, (sql, plan)
            assert "SCAN" not in plan, (sql, plan)
    finally:
        await store.close()


async def test_schema_4_database_migrates_with_sent_times_and_reader_counts(
    db_path: Path,
) -> None:
    """A database of the release before bounded clocks (schema 4): every row's sent_at
    is its origin_ts, and each unread after_read event counts the required readers who
    have not read it (sender, late joiners and readers through either key excluded), so
    the next receipt finishes the job; a claim under a backlog uses the new index."""
    with _old_database(db_path, 4) as conn:
        conn.executemany(
            "INSERT INTO members (room_id, user_id, join_seq) VALUES ('!r:x', ?, ?)",
            [("@a:x", 1), ("@b:x", 2), ("@c:x", 3), ("@late:x", 9)],
        )
        conn.executemany(
            "INSERT INTO receipts (room_id, user_id, thread, seq) VALUES ('!r:x', ?, ?, ?)",
            [("@b:x", "", 5), ("@c:x", "main", 4)],
        )
        conn.executemany(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
            "cap_ms, due_at, status) VALUES (?, '!r:x', '@a:x', ?, 1000, 2, 60000, 600000, "
            "601000, 0)",
            [("$m4", 4), ("$m6", 6)],
        )
        conn.executemany(
            "INSERT INTO positions (room_id, event_id, seq) VALUES ('!r:x', ?, ?)",
            [("$m4", 4), ("$m6", 6)],
        )
    conn.close()

    store = await Store.open(db_path)
    try:
        await _migrated(store)
        async with store.conn.execute(
            "SELECT event_id, sent_at, readers_left FROM events ORDER BY seq"
        ) as cur:
            # $m4: b and c read it; $m6: neither (b's and c's receipts are before it).
            assert [tuple(r) for r in await cur.fetchall()] == [("$m4", 1000, 0), ("$m6", 1000, 2)]
        async with store.transaction() as tx:
            old = await tx.move_receipt("!r:x", "@c:x", "", 6)
            assert old == 0
            await tx.cover("!r:x", "@c:x", "", old, 6, 2000)
            old = await tx.move_receipt("!r:x", "@b:x", "", 6)
            assert old == 5
            await tx.cover("!r:x", "@b:x", "", old, 6, 3000)
        async with store.conn.execute("SELECT read_at, due_at FROM events WHERE seq = 6") as cur:
            assert [tuple(r) for r in await cur.fetchall()] == [(3000, 63000)]
        plan = await _plan(
            store, "SELECT event_id FROM events INDEXED BY events_room_due "
            "WHERE room_id = ? AND status = 0 AND due_at IS NOT NULL AND due_at <= ? "
            "ORDER BY due_at", ("!r:x", 0))
        assert "INDEX events_room_due" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        await store.close()


async def test_a_status_of_a_newer_version_is_read_not_refused(database: Database) -> None:
    """After a downgrade, a row in a status this version does not know must not stop
    ingest when its redaction comes by: it is read as the bare number, and no rule for
    a known status applies to it."""
    store = await open_store(database)
    try:
        async with store.transaction() as tx:
            await tx.ensure_room("!r:x")
            await tx.insert_events([TrackedEvent(
                "$m", "!r:x", "@a:x", 1, 1000, None, None, Policy.after_send(60_000),
                None, 61_000)])
        await _run(store, "UPDATE events SET status = 99 WHERE event_id = '$m'")
        async with store.transaction() as tx:
            target = await tx.redaction_target("!r:x", "$m")
        assert target is not None and target.status == 99
        assert not isinstance(target.status, EventStatus)
        assert (await store.count_by_status()).get(99) == 1
    finally:
        await store.close()


async def test_schema_10_database_migrates_and_resets_in_flight_through_an_index(
    db_path: Path,
) -> None:
    """A database of the release before the in-flight index (schema 10): start resets
    what a previous process had in flight through the new partial index, so a restart
    costs no read of every tracked event (2 s at 10 M, benchmark 4)."""
    with _old_database(db_path, 10) as conn:
        conn.executemany(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
            "due_at, status) VALUES (?, '!r:x', '@a:x', ?, 1000, 1, 60000, 61000, ?)",
            [("$m1", 1, EventStatus.IN_FLIGHT), ("$m2", 2, EventStatus.WAITING)],
        )
    conn.close()

    store = await Store.open(db_path)
    try:
        await _migrated(store)
        statements: list[str] = []
        await store.conn.set_trace_callback(statements.append)
        async with store.transaction() as tx:
            await tx.reset_in_flight()
        await store.conn.set_trace_callback(None)
        [update] = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
        plan = await _plan(store, update)
        assert "INDEX events_in_flight" in plan and "SCAN" not in plan, plan
        assert await store.count_by_status() == {EventStatus.WAITING: 2}
    finally:
        await store.close()
