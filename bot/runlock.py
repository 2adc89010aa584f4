"""One running process per database: `lethe run` holds ``data_dir/lethe.lock``, `lethe
bridge run` the ``.lock`` next to its database, for as long as it runs.

Two bots on one ``data_dir`` would redact everything twice and write the same E2EE key
store at once, which can damage it. The lock is an ``flock`` on an open file, so the
kernel releases it when the process ends, however it ends: a stale lock file left by a
crash never blocks the next start. The administration commands open the database
read-only and never take it (`purge --hard` only looks whether it is held: is_held).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bot.errors import SetupError

BOT_LOCK = "lethe.lock"  # in data_dir, next to lethe.db


class AlreadyRunning(SetupError, RuntimeError):
    """Another process holds the lock; the message names it and the way out."""


class LockUnusable(SetupError, RuntimeError):
    """The lock file cannot be made or opened (permissions, a read-only disk)."""


class RunLock:
    """An exclusive lock held until ``release`` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold(path: Path, what: str) -> RunLock:
    """Take the lock at ``path`` for ``what`` (e.g. "lethe run"), or raise AlreadyRunning."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LockUnusable(f"{path}: cannot open the run lock: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise AlreadyRunning(
            f"another Lethe process{holder} is already running on {path.parent} (it holds "
            f"{path}); two would redact every message twice and could damage the key "
            "store. Stop it first, or give this one its own data_dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for the message a second start prints (a pid, not a secret).
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
    return RunLock(path, fd)


def is_held(path: Path) -> bool:
    """Whether a process holds the lock at ``path`` (runs on that data). Looks with a
    shared lock dropped at once: never in the way of a start for longer than that."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # never made: nothing ever ran there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 200, 0).decode().strip()
        pid, _, what = text.partition(" ")
        if pid.isdigit():
            return f" (pid {pid}, {what or 'lethe'})"
    return ""
