"""Files that hold secrets: owner-only, written atomically (no nio needed here)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def secure_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_secret(path: Path, text: str, *, secure_parent: bool = True) -> None:
    """Create or replace a file readable by its owner only, atomically: the one writer
    of Lethe's secret files. ``secure_parent`` makes its directory owner-only too
    (Lethe's own data_dir; not a directory the operator chose, e.g. the homeserver's)."""
    if secure_parent:
        secure_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
