"""`lethe db migrate`: a SQLite store with rows in every table, copied into PostgreSQL
(bot/engine/store/copy.py), reads the same there; a non-empty target is refused; the
source file is never changed; the password never shows."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from click.testing import CliRunner

from bot.cli.main import main
from bot.devtools.localpostgres import LocalPostgres
from bot.engine.model import DelayRef, EventStatus, MediaState
from bot.engine.store import (
    SCHEMA_VERSION,
    CopyMismatch,
    Database,
    PgStore,
    StoreBackend,
    StoreError,
    TargetNotEmpty,
    lethe_rows,
    migrate,
    open_store,
    probe_postgres,
)
from bot.runlock import BOT_LOCK, hold
from tests.conftest import pg_database

ROOM, OTHER = "!a:x", "!b:x"


async def _fill(path: Path) -> None:
    """Rows in every table: events of every status, and one of each other kind."""
    store = await open_store(Database.sqlite(path))
    assert not isinstance(store, PgStore)
    c = store.conn
    rows: dict[str, list[tuple[Any, ...]]] = {
        "meta": [("seq", "40"), ("bounds", '{"x": 1}')],
        "rooms": [(ROOM, None, None, "{}", "@p:x", 1, 50, 50, "$e0",
                   3, 1),
                  (OTHER, None, None, "{}", None, 0, 0, 50, None, 0, 0)],
        "members": [(ROOM, "@p:x", 1), (ROOM, "@q:x", 2)],
        "receipts": [(ROOM, "@q:x", "", 5), (ROOM, "@q:x", "main", 6)],
        "appservice_txns": [("txn1", 1000)],
        "positions": [(ROOM, f"$p{i}", i) for i in range(1, 8)],
        "media": [(f"$e{s.value}", "x", f"m{s.value}", ROOM, m.value, 10, None, 0)
                  for s, m in zip(EventStatus, [*MediaState, MediaState.HELD], strict=True)],
        "erasures": [(ROOM, "$gone", 1234)],
        "delay_cancels": [(3, "d1", "@bot:x", ROOM, "$e0", 0, 0),
                          (9, None, "@bot:x", ROOM, "$e1", 500, 2)],
    }
    for table, values in rows.items():
        marks = ", ".join("?" * len(values[0]))
        await c.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
    for s in EventStatus:
        await c.execute(
            "INSERT INTO events (event_id, room_id, sender, seq, origin_ts, mode, timer_ms, "
            "due_at, status, sent_at, own, delay_state, readers_left) "
            "VALUES (?, ?, '@p:x', ?, 1000, 0, 60000, ?, ?, 1000, ?, 0, NULL)",
            (f"$e{s.value}", ROOM, 10 + s.value, 61000 + s.value, s.value, s.value % 2))
    # held: its rowid (SQLite's insertion order) is what `held()` sorts by.
    for i, event_id in enumerate(["$h2", "$h1", "$h3"]):
        await c.execute("INSERT INTO held (event_id, room_id, sender, seq, mode) "
                        "VALUES (?, ?, '@bot:x', ?, ?)", (event_id, ROOM, 20 + i, None))
    await c.commit()
    await store.close()


async def _reads(store: StoreBackend) -> dict[str, Any]:
    return {
        "meta": [await store.get_meta(k) for k in ("seq", "bounds")],
        "rooms": await store.list_rooms(),
        "members": await store.members(ROOM),
        "statuses": await store.count_by_status(),
        "pending": await store.pending(),
        "media": (await store.media_counts(), await store.media_of(
            [f"$e{s.value}" for s in EventStatus])),
        "ledger": await store.ledger(ROOM),
        "cancels": (await store.cancels(), await store.due_cancels(10**12, 10)),
        "held": await store.held(),
        "positions": [await store.event_seq(ROOM, f"$p{i}") for i in range(1, 8)],
        "txn": await store.appservice_txn_done("txn1"),
        "schedules": await store.room_schedules(),
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_every_table_reads_the_same_on_postgresql(
        tmp_path: Path, postgres: LocalPostgres) -> None:
    source = tmp_path / "lethe.db"
    await _fill(source)
    before = _digest(source)
    sqlite = await open_store(Database.sqlite(source), readonly=True)
    expected = await _reads(sqlite)
    await sqlite.close()
    target = pg_database(postgres)

    report = await migrate(Database.sqlite(source), target)

    counts = {t.table: t.rows for t in report.tables}
    assert counts["events"] == len(EventStatus) and counts["held"] == 3
    assert all(counts[t] for t in counts), counts  # every table had rows to copy
    assert _digest(source) == before
    pg = await open_store(target)
    try:
        assert await _reads(pg) == expected
        assert [h.event_id for h in await pg.held()] == ["$h2", "$h1", "$h3"]
        # The identity sequences continue past the copied values.
        async with pg.transaction() as tx:
            await tx.queue_cancel(DelayRef(None, "@bot:x", ROOM, "$e2"))
            await tx.hold(ROOM, "$h4")
        assert max(j.job_id for j in await pg.due_cancels(10**12, 10)) == 10
        assert [h.event_id for h in await pg.held()][-1] == "$h4"
    finally:
        await pg.close()

    with pytest.raises(TargetNotEmpty, match="already holds Lethe data"):
        await migrate(Database.sqlite(source), target)
    assert _digest(source) == before


def bad_urls(pg: LocalPostgres, secret: str) -> list[tuple[str, str, str]]:
    """(url, its password, the problem named): a closed port, a wrong password, a
    missing database (with the right password: that one must not show either)."""
    real = Database.postgresql(pg.url("lethe_tests"))
    password = real.password
    assert password
    host = real.url.split("@", 1)[1].rsplit("/", 1)[0]
    return [(f"postgresql://lethe:{secret}@127.0.0.1:1/lethe_tests", secret, "cannot reach"),
            (f"postgresql://lethe:{secret}@{host}/lethe_tests", secret,
             "refused the user name or password"),
            (f"postgresql://lethe:{password}@{host}/no_such_db", password,
             "no such database")]


async def test_the_password_never_shows(postgres: LocalPostgres) -> None:
    for url, password, problem in bad_urls(postgres, "Zq7-unmistakable-pw"):
        with pytest.raises(StoreError) as caught:
            await probe_postgres(Database.postgresql(url))
        assert problem in str(caught.value) and password not in str(caught.value)
        assert ":***@" in str(caught.value)


def _config(directory: Path, database: str | None = None, bridge: bool = False) -> Path:
    data: dict[str, Any] = {
        "homeserver": {"url": "http://127.0.0.1:1"},
        "bot": {"user_id": "@lethe:x"},
        "data_dir": str(directory / "data"),
        "e2ee": {"pickle_key": "f3" * 16},
    }
    if database is not None:
        data["database"] = database
    if bridge:
        data["bridge"] = {"user_id": "@lethe-bridge:x", "database": database or "bridge.db",
                          "listen": {"port": 1}}
    path = directory / "lethe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.output + result.stderr


@pytest.mark.parametrize("bridge", [False, True])
async def test_the_command_copies_reports_and_refuses_a_second_time(
        tmp_path: Path, postgres: LocalPostgres, bridge: bool) -> None:
    config = _config(tmp_path, bridge=bridge)
    source = tmp_path / "data" / ("bridge.db" if bridge else "lethe.db")
    await _fill(source)
    before = _digest(source)
    target = pg_database(postgres)
    assert target.password
    flags = ["--bridge"] if bridge else []

    code, out = await asyncio.to_thread(_run, "-c", str(config), "db", "migrate",
                                        "--to", target.url, *flags)
    assert code == 0, out
    assert "the counts and checksums match on both sides" in out
    key = "bridge.database" if bridge else "database"
    assert f"  {key}: postgresql://lethe@127.0.0.1:" in out
    assert ("LETHE_BRIDGE_DATABASE_URL" if bridge else "LETHE_DATABASE_URL") in out
    assert target.password not in out
    assert _digest(source) == before

    code, out = await asyncio.to_thread(_run, "-c", str(config), "db", "migrate",
                                        "--to", target.url, *flags)
    assert code == 3 and "already holds Lethe data" in out and target.password not in out
    assert _digest(source) == before
    if not bridge:  # doctor's connection check, on the moved database
        moved = _config(tmp_path, database=target.url)
        code, out = await asyncio.to_thread(_run, "-c", str(moved), "doctor")
        line = next(x for x in out.splitlines() if "PostgreSQL" in x)
        assert line.startswith("ok") and "round trip" in line, out
        assert f"schema v{SCHEMA_VERSION}" in line
        assert target.password not in out


def test_a_running_bot_or_a_sqlite_target_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "data").mkdir()
    with hold(tmp_path / "data" / BOT_LOCK, "lethe run"):
        code, out = _run("-c", str(config), "db", "migrate", "--to",
                         "postgresql://lethe:pw-xyz@127.0.0.1:1/db")
    assert code == 3 and "already running" in out and "pw-xyz" not in out
    code, out = _run("-c", str(config), "db", "migrate", "--to", "other.db")
    assert code == 2 and "PostgreSQL" in out


async def test_no_command_shows_the_password(tmp_path: Path, postgres: LocalPostgres) -> None:
    """db migrate, doctor and bridge run, against a closed port, a wrong password and a
    missing database: the problem named, the password nowhere (output or exit)."""
    await _fill(tmp_path / "data" / "lethe.db")
    for url, password, problem in bad_urls(postgres, "Zq7-unmistakable-pw"):
        config = _config(tmp_path, bridge=True)
        code, out = await asyncio.to_thread(_run, "-c", str(config), "db", "migrate",
                                            "--to", url)
        assert code == 3 and problem in out and password not in out, out

        config = _config(tmp_path, database=url, bridge=True)
        code, out = await asyncio.to_thread(_run, "-c", str(config), "doctor")
        assert "FAIL  database" in out or "FAIL database" in out.replace("  ", " "), out
        assert problem in out and password not in out, out

        await asyncio.to_thread(_run, "-c", str(config), "bridge", "registration",
                                "--url", "http://127.0.0.1:1", "--force")
        bridge_run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "-c", str(config), "bridge", "run",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out_bytes, _ = await asyncio.wait_for(bridge_run.communicate(), 60)
        out = out_bytes.decode()
        assert bridge_run.returncode == 3, out
        assert problem in out and password not in out, out


async def test_a_copy_that_differs_is_rolled_back(
        tmp_path: Path, postgres: LocalPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row lost on the way (a fault injected into the copy) fails the verification:
    nothing is committed, and the same target takes a sound copy afterwards."""
    source = tmp_path / "lethe.db"
    await _fill(source)
    target = pg_database(postgres)
    real = asyncpg.Connection.copy_records_to_table

    async def lossy(self: asyncpg.Connection, table: str, *, records: list[Any],
                    **kwargs: Any) -> Any:
        return await real(self, table, records=records[:-1] if table == "events" else records,
                          **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", lossy)
    with pytest.raises(CopyMismatch, match="events differs after the copy"):
        await migrate(Database.sqlite(source), target)
    pg = await open_store(target)
    assert isinstance(pg, PgStore)
    try:
        assert not any((await lethe_rows(pg)).values())
    finally:
        await pg.close()
    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", real)
    report = await migrate(Database.sqlite(source), target)
    assert {t.table: t.rows for t in report.tables}["events"] == len(EventStatus)
