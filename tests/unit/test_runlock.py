"""One process per database (bot/runlock.py); the cross-process case is in
tests/test_continuity.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bot.errors import SetupError
from bot.runlock import AlreadyRunning, LockUnusable, hold


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    path = tmp_path / "data" / "lethe.lock"
    first = hold(path, "lethe run")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{os.getpid()} lethe run\n"
    with pytest.raises(AlreadyRunning) as refused:
        hold(path, "lethe run")
    assert f"pid {os.getpid()}, lethe run" in str(refused.value)
    assert str(path) in str(refused.value)
    first.release()
    with hold(path, "lethe run"):  # a stale file is no lock
        pass


def test_a_lock_that_cannot_be_made_is_a_setup_error(tmp_path: Path) -> None:
    """Exit 3 naming the file, not "homeserver unreachable": the lock is taken inside
    the async run, where other OSErrors mean the network."""
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data_dir should be")
    with pytest.raises(LockUnusable) as refused:
        hold(blocker / "lethe.lock", "lethe run")
    assert isinstance(refused.value, SetupError)
    assert "lethe.lock" in str(refused.value)
