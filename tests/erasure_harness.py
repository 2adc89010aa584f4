"""What the erasure tests share: a homeserver admin's token in a config, the admin's
view of an event, and `lethe` on a real terminal (for the confirmation prompt)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bot.devtools.localsynapse import LocalSynapse
from bot.matrix.api import MatrixHttp
from tests.harness import REPO, clean_env, lethe_argv, unique


def admin_token_file(hs: LocalSynapse, directory: Path) -> tuple[str, Path]:
    """A fresh homeserver admin's token, in a file of mode 0600."""
    admin = hs.register(unique("admin"), admin=True)
    path = directory / "admin-token"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(admin.access_token)
    path.chmod(0o600)
    return admin.access_token, path


def with_erasure(config_path: Path, **erasure: Any) -> None:
    """Give the config file an ``erasure`` section (the running bot keeps its own)."""
    data = yaml.safe_load(config_path.read_text())
    data["erasure"] = {key: str(value) for key, value in erasure.items()}
    config_path.write_text(yaml.safe_dump(data))


async def stored_event(hs: LocalSynapse, token: str, event_id: str) -> tuple[int, Any]:
    """The admin's ``fetch_event``: (status, the stored event or None)."""
    http = MatrixHttp(hs.base_url, token)
    try:
        reply = await http.admin_fetch_event(event_id)
    finally:
        await http.close()
    return reply.status, reply.body.get("event")


def on_terminal(args: list[str], answer: str, timeout: float = 90) -> tuple[int, str]:
    """``lethe ARGS`` with a pseudo-terminal as stdin and output, answering the first
    ``[y/N]`` prompt with ``answer``; returns the exit code and everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(lethe_argv(*args), stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=clean_env())
    os.close(slave)
    out, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the terminal closed: the process is done
                    break
                out += chunk
                if not answered and b"[y/N]" in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.decode(errors="replace")
