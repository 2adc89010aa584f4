"""The database-outage bookkeeping the writing loops share (bot/engine/outage.py):
which errors mean "try again later", the back-off, and what is logged."""

from __future__ import annotations

import logging
import sqlite3

import asyncpg
import pytest

from bot.engine.outage import MAX_BACKOFF_S, DatabaseOutage


def test_only_the_database_being_away_is_waited_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = DatabaseOutage("scheduler", lambda: now[0])
    assert outage.failed(ValueError("a bug")) is None
    assert outage.failed(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert not outage.down

    caplog.set_level(logging.DEBUG)
    waits = [outage.failed(ConnectionRefusedError(111, "Connect call failed")) for _ in range(12)]
    waits.append(outage.failed(asyncpg.AdminShutdownError("terminating connection")))
    assert all(w is not None for w in waits)
    assert waits == sorted(waits) and waits[-1] == MAX_BACKOFF_S and waits[0] < 1
    assert outage.down
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "said once per outage, not once per try"
    assert "the database is unavailable (ConnectionRefusedError)" in warnings[0].getMessage()

    now[0] = 112.5
    outage.ok()
    assert not outage.down
    assert "the database is back after 12.5 s" in caplog.text
    assert outage.failed(OSError("again")) == waits[0], "the back-off starts over"
