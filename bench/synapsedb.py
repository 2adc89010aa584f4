"""The benchmarks' homeserver: a throwaway Synapse on loopback, on SQLite or on
PostgreSQL (Synapse's psycopg2 database on a throwaway LocalPostgres server), chosen by
``--synapse-db`` (or $LETHE_BENCH_SYNAPSE_DB). The bare-client baselines run against the
same Synapse as Lethe, so the choice applies to both; Lethe's own store stays SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bot.devtools.localpostgres import LocalPostgres, find_bindir
from bot.devtools.localsynapse import LocalSynapse

SYNAPSE_DBS = ("sqlite", "postgres")
SYNAPSE_DB_ENV = "LETHE_BENCH_SYNAPSE_DB"
# The PostgreSQL server under each running benchmark Synapse (benchmarks read its CPU).
_POSTGRES: dict[LocalSynapse, LocalPostgres] = {}


def add_synapse_db_option(parser: argparse.ArgumentParser) -> None:
    """``--synapse-db``: the database of the benchmark's Synapse (and its baselines')."""
    parser.add_argument(
        "--synapse-db", choices=SYNAPSE_DBS, default=os.environ.get(SYNAPSE_DB_ENV, "sqlite"),
        help=f"Synapse's own database: SQLite (default; or ${SYNAPSE_DB_ENV}) or PostgreSQL "
             "(psycopg2, a throwaway server on loopback); Lethe's store is SQLite either way")


@contextlib.contextmanager
def _synapse_database(synapse_db: str) -> Iterator[LocalPostgres | None]:
    if synapse_db == "sqlite":
        yield None
        return
    pg = LocalPostgres()  # its own /tmp dir: the server runs as another account when root
    try:
        pg.start()
        pg.create("synapse")  # template0, C collation, as Synapse requires
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.workdir, ignore_errors=True)


@contextlib.contextmanager
def local_synapse(extra_config: dict[str, Any] | None = None,
                  synapse_db: str = "sqlite") -> Iterator[LocalSynapse]:
    """A throwaway Synapse on loopback with rate limits raised (LocalSynapse's default),
    on SQLite or on a throwaway PostgreSQL server (``synapse_db``)."""
    with tempfile.TemporaryDirectory(prefix="lethe-bench-hs-") as tmp, \
            _synapse_database(synapse_db) as pg:
        database = pg.synapse_database("synapse") if pg is not None else None
        hs = LocalSynapse(Path(tmp) / "synapse", extra_config=extra_config, database=database)
        hs.start()
        if pg is not None:
            _POSTGRES[hs] = pg
        try:
            yield hs
        finally:
            _POSTGRES.pop(hs, None)
            hs.stop()


def database_cpu_seconds(hs: LocalSynapse) -> float:
    """CPU time the PostgreSQL server under ``hs`` has used so far (its postmaster and
    every backend, the exited ones included); 0 on SQLite, whose time is Synapse's own."""
    pg = _POSTGRES.get(hs)
    if pg is None:
        return 0.0
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if pid == postmaster:  # its own time and its reaped children's
                total += sum(int(f) for f in fields[11:15])
            elif int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def versions(synapse_db: str) -> dict[str, str]:
    """Synapse's version, and PostgreSQL's when it is Synapse's database."""
    import synapse

    found = {"synapse": str(synapse.__version__).split(" ")[0]}
    bindir = find_bindir()
    if synapse_db == "postgres" and bindir is not None:
        found["postgres"] = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True,
            check=False).stdout.strip()
    return found
