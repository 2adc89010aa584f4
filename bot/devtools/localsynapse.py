"""Throwaway local Synapse homeserver for `lethe demo` and the test suite.

Everything lives in one work directory (config, signing key, SQLite database unless a
PostgreSQL one is given, media, logs)
and the server listens on 127.0.0.1 only, with federation and every outbound feature
switched off: the machines this runs on may have no network at all.

The API is synchronous on purpose so it can be driven from session-scoped pytest fixtures
and from click commands before ``asyncio.run``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from bot.devtools.synapseconfig import log_config, rate_limits
from bot.devtools.synapseusers import OPENER, RegisteredUser, register_user
from bot.matrix.files import write_secret

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "Synapse (matrix-synapse) is not installed in this environment. "
    "Install it with: pip install 'lethe-matrix[demo]' (or 'lethe-matrix[test]' for the tests)"
)

# How many lines of each log file go into a SynapseStartError.
_LOG_TAIL_LINES = 40


class SynapseNotInstalled(RuntimeError):
    """matrix-synapse cannot be imported."""


class SynapseStartError(RuntimeError):
    """Synapse exited or did not answer in time; the message ends with its log tail."""


def find_free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def synapse_available() -> bool:
    """True when ``import synapse`` works in this interpreter."""
    try:
        importlib.import_module("synapse")
    except Exception:  # a broken install can raise more than ImportError
        return False
    return True


def _require_synapse() -> None:
    if not synapse_available():
        raise SynapseNotInstalled(_INSTALL_HINT)


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for a failure message."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return "(no such file)\n"


class LocalSynapse:
    """A single Synapse process bound to 127.0.0.1, owned by the calling process."""

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "localhost",
        rate_limited: bool = False,
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
        database: Mapping[str, Any] | None = None,
    ) -> None:
        """``database``: Synapse's ``database:`` section, e.g. psycopg2's from
        LocalPostgres.synapse_database (its server must use the C locale); default a
        SQLite file in ``workdir``."""
        _require_synapse()
        self.workdir = Path(workdir).resolve()
        self.server_name = server_name
        self.rate_limited = rate_limited
        # The port is fixed for the lifetime of the object so restart() keeps base_url.
        self.port = port if port is not None else find_free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.registration_shared_secret = secrets.token_urlsafe(32)
        self._macaroon_secret_key = secrets.token_urlsafe(32)
        self._form_secret = secrets.token_urlsafe(32)
        self._extra_config: dict[str, Any] = dict(extra_config or {})
        self._database: dict[str, Any] = dict(database or {
            "name": "sqlite3", "args": {"database": str(self.workdir / "homeserver.db")}})
        self._app_service_files: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "homeserver.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "synapse.stdout.log"

    @property
    def _log_config_path(self) -> Path:
        return self.workdir / "log.config.yaml"

    @property
    def _signing_key_path(self) -> Path:
        return self.workdir / f"{self.server_name}.signing.key"

    # -- configuration ---------------------------------------------------------------------

    def add_app_service_config(self, path: Path) -> None:
        """Register an appservice registration file; applies on the next (re)start."""
        resolved = Path(path).resolve()
        if resolved not in self._app_service_files:
            self._app_service_files.append(resolved)

    def remove_app_service_config(self, path: Path) -> None:
        """Unregister an appservice registration file; applies on the next (re)start.
        An appservice left registered while nothing answers at its URL holds the
        homeserver's pushes to the others back (its retries), so tests remove theirs."""
        resolved = Path(path).resolve()
        if resolved in self._app_service_files:
            self._app_service_files.remove(resolved)

    def build_config(self) -> dict[str, Any]:
        """The homeserver.yaml contents as a dict (extra_config merged last, shallowly)."""
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.base_url + "/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": self._database,
            "media_store_path": str(self.workdir / "media_store"),
            "log_config": str(self._log_config_path),
            "signing_key_path": str(self._signing_key_path),
            "registration_shared_secret": self.registration_shared_secret,
            "macaroon_secret_key": self._macaroon_secret_key,
            "form_secret": self._form_secret,
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            # No network here: never fetch keys from matrix.org, never federate.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "presence": {"enabled": False},
            "app_service_config_files": [str(p) for p in self._app_service_files],
            **rate_limits(self.rate_limited),
        }
        config.update(self._extra_config)
        return config

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media_store").mkdir(exist_ok=True)
        write_secret(self._log_config_path,
                     yaml.safe_dump(log_config(self.log_path), sort_keys=False),
                     secure_parent=False)
        # The config holds the shared secret: owner-only.
        write_secret(self.config_path, yaml.safe_dump(self.build_config(), sort_keys=False),
                     secure_parent=False)

    def _generate_keys(self, timeout: float) -> None:
        if self._signing_key_path.exists():
            return
        cmd = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)]
        with self.stdout_path.open("ab") as out:
            result = subprocess.run(
                [*cmd, "--generate-keys"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                env=self.process_env(),
            )
        if result.returncode != 0 or not self._signing_key_path.exists():
            raise SynapseStartError(
                f"Synapse --generate-keys failed (exit {result.returncode})\n{self._log_tails()}"
            )

    def process_env(self) -> dict[str, str] | None:
        """The environment of the Synapse process; None inherits this one (subclasses
        change it, e.g. bot.devtools.localfederation to shift the server's clock)."""
        return None

    # -- lifecycle -------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The Synapse process (benchmarks read its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        """Write the config, spawn Synapse and block until the client API answers."""
        if self.is_running():
            return
        _require_synapse()
        deadline = time.monotonic() + timeout
        self._write_config()
        self._generate_keys(timeout)

        cmd = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)]
        started = time.monotonic()
        # Output goes to a file, not a PIPE nobody drains (a full pipe would block Synapse).
        # Its own session lets stop() signal the whole process group.
        with self.stdout_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.process_env(),
            )
        if not self._atexit_registered:
            # A crashed or interrupted test run must not leave a Synapse behind.
            atexit.register(self.stop)
            self._atexit_registered = True

        try:
            self._wait_until_ready(deadline)
        except BaseException:
            self.stop()
            raise
        log.info(
            "Synapse %s up at %s (pid %d) in %.1fs",
            self.server_name,
            self.base_url,
            self._proc.pid,
            time.monotonic() - started,
        )

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._proc is not None
        url = f"{self.base_url}/_matrix/client/versions"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise SynapseStartError(
                    f"Synapse exited with code {code} during startup\n{self._log_tails()}"
                )
            try:
                with OPENER.open(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise SynapseStartError(
                    f"Synapse did not answer {url} before the deadline\n{self._log_tails()}"
                )
            time.sleep(0.2)

    def _log_tails(self) -> str:
        return (
            f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
            f"--- last lines of {self.stdout_path} ---\n{log_tail(self.stdout_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("Synapse pid %d ignored SIGTERM; killing it", proc.pid)
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout)
        self._proc = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # start_new_session made the pid the group id; signal the group so any
        # helper processes Synapse spawned go too.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def restart(self) -> None:
        """Stop and start again: same port, same database, same secrets."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalSynapse:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- users -----------------------------------------------------------------------------

    def register(
        self, localpart: str, password: str | None = None, *, admin: bool = False
    ) -> RegisteredUser:
        """Create a user through the shared-secret admin API and return its credentials."""
        return register_user(self.base_url, self.server_name, self.registration_shared_secret,
                             localpart, password, admin=admin)
