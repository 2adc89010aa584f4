"""``database:`` (the bot) and ``bridge.database`` (the bridge): where Lethe keeps its
state, a SQLite file (the default, in data_dir) or a PostgreSQL database by URL.

The URL may hold a password; an environment variable can give the whole URL instead,
so that the password need not be in the config file (or use PostgreSQL's own
``PGPASSWORD`` / ``~/.pgpass``, which the driver reads). Errors never repeat it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bot.engine.store import Database, DatabaseUrlError

BOT_DATABASE_ENV = "LETHE_DATABASE_URL"
BRIDGE_DATABASE_ENV = "LETHE_BRIDGE_DATABASE_URL"


class _Reader(Protocol):
    def fail(self, key: str, message: str) -> Exception: ...


def read_database(r: _Reader, section: Mapping[str, Any], key: str, name: str,
                  data_dir: Path, default: str, env: Mapping[str, str],
                  env_name: str) -> Database:
    """The database at ``section[name]`` (config key ``key``), or ``env[env_name]``."""
    raw: Any = env.get(env_name) or section.get(name, default)
    where = env_name if env.get(env_name) else key
    if not isinstance(raw, str):
        raise r.fail(where, "must be a SQLite path or URL (sqlite:///lethe.db) or a "
                            "PostgreSQL URL (postgresql://user@host/dbname)")
    try:
        return Database.parse(raw, data_dir)
    except DatabaseUrlError as exc:
        raise r.fail(where, str(exc)) from None
