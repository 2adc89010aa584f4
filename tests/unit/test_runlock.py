"""One process per database (bot/runlock.py); the cross-process case is in
tests/test_continuity.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bot.runlock import AlreadyRunning, hold


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
