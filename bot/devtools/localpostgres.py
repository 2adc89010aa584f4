"""A throwaway PostgreSQL server for the test suite and the benchmarks, made from the
machine's own server binaries (``initdb``, ``pg_ctl``: on PATH or under
/usr/lib/postgresql/*/bin) in one work directory, listening on 127.0.0.1 and a Unix
socket in that directory only.

Connections over TCP need the password (scram-sha-256), so the URLs it hands out are the
kind an operator writes. PostgreSQL refuses to run as root; as root the server runs as
the ``postgres`` account (Debian's package makes it) and the work directory is given to it.

Synchronous, like LocalSynapse, for session-scoped fixtures.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from bot.devtools.localsynapse import find_free_port, log_tail

SUPERUSER = "lethe"
_INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH or under "
    "/usr/lib/postgresql/*/bin. Debian: apt-get install postgresql"
)


class PostgresUnavailable(RuntimeError):
    """No server binaries, or no account to run them as."""


class PostgresStartError(RuntimeError):
    """initdb or the server failed; the message ends with the log's tail."""


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are, newest major version first."""
    found = shutil.which("initdb")
    if found is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(found)).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                            key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit()
                            else 0, reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    return None


def postgres_available() -> bool:
    try:
        _runner()
    except PostgresUnavailable:
        return False
    return find_bindir() is not None


def _runner() -> pwd.struct_passwd | None:
    """The account to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and there is no 'postgres' account to run PostgreSQL as "
            "(Debian's postgresql package makes it)"
        ) from None


class LocalPostgres:
    """One server in ``workdir``; ``url(name)`` for a database made by ``create``."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None) -> None:
        # Not under pytest's tmp_path by default: its parents are private to root, and
        # the server may run as another account.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lethe-pg-"))
        self.port = port or find_free_port()
        self.password = secrets.token_urlsafe(12)
        self._bindir = find_bindir()
        self._account = _runner()
        self._running = False

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    def url(self, database: str, *, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def synapse_database(self, database: str) -> dict[str, Any]:
        """Synapse's ``database:`` section (psycopg2) for a database on this server."""
        return {"name": "psycopg2", "args": {
            "user": SUPERUSER, "password": self.password, "database": database,
            "host": "127.0.0.1", "port": self.port, "cp_min": 5, "cp_max": 10,
        }}

    # --- running -------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self._bindir is None:
            raise PostgresUnavailable(_INSTALL_HINT)
        command = [str(self._bindir / args[0]), *args[1:]]
        account = self._account
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            env={**os.environ, "LC_ALL": "C"},
        )

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def start(self, timeout: float = 60) -> None:
        if self._bindir is None:
            raise PostgresUnavailable(_INSTALL_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own(self.workdir)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c unix_socket_directories={self.socket_dir} -c fsync=on "
                   "-c max_connections=200 -c shared_buffers=256MB")
        done = self._run("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.log_path),
                         "-w", "-t", str(int(timeout)), "-o", options, timeout=timeout + 10)
        if done.returncode != 0:
            raise PostgresStartError(f"pg_ctl start failed: {done.stderr.strip()}\n"
                                     f"{log_tail(self.log_path)}")
        self._running = True

    def _initdb(self) -> None:
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        self._own(pwfile)
        done = self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER,
                         f"--pwfile={pwfile}", "--auth-local=trust",
                         "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")
        pwfile.unlink()
        if done.returncode != 0:
            raise PostgresStartError(f"initdb failed: {done.stderr.strip()}")

    def stop(self, *, mode: str = "fast") -> None:
        """``mode`` immediate: as if the server crashed (no shutdown checkpoint)."""
        if not self._running:
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", timeout=60)
        self._running = False

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the socket; its output (unaligned, no header)."""
        done = self._run("psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U",
                         SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create(self, database: str) -> str:
        """A new empty database; its URL."""
        self.psql(f'CREATE DATABASE "{database}" TEMPLATE template0')
        return self.url(database)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
