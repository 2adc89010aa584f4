"""`lethe db migrate --to postgresql://…`: move the bot's SQLite database (or, with
--bridge, the bridge's) into an empty PostgreSQL database, checked row by row.

The source is only read, under the run lock (nothing may run on it meanwhile); the
copy is one PostgreSQL transaction, verified before it commits (bot/engine/store/
copy.py). Every message names the target by its URL with the password masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from bot.cli.common import cli_config, config_option, config_path, run_async
from bot.cli.output import say
from bot.databaseconfig import BOT_DATABASE_ENV, BRIDGE_DATABASE_ENV
from bot.engine.store import CopyReport, Database, DatabaseUrlError, migrate
from bot.errors import UsageError
from bot.runlock import BOT_LOCK, hold


@dataclass(frozen=True)
class _Side:
    """Whose database moves: where it is, its run lock, and how the config names it."""

    database: Database
    lock: Path
    key: str
    env: str
    what: str


def _side(ctx: click.Context, bridge: bool) -> _Side:
    if bridge:
        # Imported here: the bot never loads the bridge unless asked to.
        from bridge.config import load_bridge_config, run_lock_path

        bridge_config = load_bridge_config(config_path(ctx, "lethe -c CONFIG db migrate"))
        return _Side(bridge_config.database, run_lock_path(bridge_config),
                     "bridge.database", BRIDGE_DATABASE_ENV, "lethe bridge run")
    config = cli_config(ctx)
    return _Side(config.database, config.data_dir / BOT_LOCK, "database",
                 BOT_DATABASE_ENV, "lethe run")


@click.group()
def db() -> None:
    """Lethe's database: moving it to PostgreSQL."""


@db.command("migrate")
@config_option
@click.option("--to", "to", required=True, metavar="URL",
              help="The empty PostgreSQL database: postgresql://user@host:5432/dbname "
                   "(the password from PGPASSWORD or ~/.pgpass, or in the URL).")
@click.option("--bridge", is_flag=True,
              help="Move the bridge's database (bridge.database), not the bot's.")
@click.pass_context
def migrate_command(ctx: click.Context, to: str, bridge: bool) -> None:
    """Copy the SQLite database the config names into an empty PostgreSQL database,
    verify it (rows and checksums per table), and leave the SQLite file as it was.
    Stop the bot (or the bridge) first."""
    try:
        target = Database.parse(to, Path.cwd())
    except DatabaseUrlError as exc:
        raise UsageError(f"--to: {exc}") from None
    if target.is_sqlite:
        raise UsageError("--to: give the PostgreSQL database to move into "
                         "(postgresql://user@host:5432/dbname)")
    side = _side(ctx, bridge)
    if not side.database.is_sqlite:
        raise UsageError(f"{side.key} is already a PostgreSQL database "
                         f"({side.database.shown}): nothing to migrate")

    async def go() -> CopyReport:
        # Held for the whole copy: `lethe run` cannot start on the source meanwhile
        # (and an already running one makes this refuse, exit 3).
        with hold(side.lock, "lethe db migrate"):
            return await migrate(side.database, target)

    report = run_async(go)
    _print(report, side, target)


def _print(report: CopyReport, side: _Side, target: Database) -> None:
    say(f"copied {side.database.shown} into {target.shown}, verified:")
    width = max(len(t.table) for t in report.tables)
    for t in report.tables:
        say(f"  {t.table:<{width}}  {t.rows:>9} row(s)  checksum {t.checksum[:16]}")
    say(f"{report.rows} row(s) in {len(report.tables)} tables; the counts and checksums "
        "match on both sides.")
    say(f"{side.database.shown} is unchanged: keep it as a backup until the new database "
        "has served well.")
    bare = target.shown.replace(":***@", "@")
    say(f"Next, point the config at the new database and start `{side.what}`:\n"
        f"  {side.key}: {bare}\n"
        f"with the password in PGPASSWORD or ~/.pgpass, or the whole URL (password "
        f"included) in ${side.env} instead of the config key.")
