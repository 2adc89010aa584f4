"""`lethe doctor`: is this installation sound? Homeserver, login, device, key store,
file modes, database, power in each room, and what redaction cannot do (with a
homeserver admin's token: what this homeserver really keeps, bot/cli/erasure_doctor.py).

Every check runs, whatever failed before it (a down homeserver still leaves the
local files to check); the exit code sums it up: 4 when the homeserver is
unreachable or the login is refused, 1 when another check failed, else 0.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import click

from bot.cli.census import pending_by_status
from bot.cli.checks import FAIL, OK, WARN, Check
from bot.cli.common import EXIT_CHECK_FAILED, EXIT_HOMESERVER, cli_config, config_option, run_async
from bot.cli.context import Admin, RequestError, admin_session, readonly_store, saved_login
from bot.cli.delayedcheck import NAME as DELAYED
from bot.cli.delayedcheck import delayed_check
from bot.cli.erasure_doctor import erasure_checks
from bot.cli.mediacheck import admin_token_check, media_checks
from bot.cli.output import emit_json, json_option, say
from bot.cli.roomstate import RoomState
from bot.config import PICKLE_KEY_ENV, Config
from bot.engine.store import SCHEMA_VERSION, StoreError, probe_postgres
from bot.matrix.api import HomeserverUnavailable
from bot.matrix.credentials import Credentials, LoginFailed
from bot.matrix.crosssigning import IdentityError, fingerprint, query_identities, stored_master


class Doctor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.checks: list[Check] = []
        self.unreachable = False
        self.login_failed = False

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))

    @property
    def exit_code(self) -> int:
        if self.unreachable or self.login_failed:
            return EXIT_HOMESERVER
        return EXIT_CHECK_FAILED if any(c.status == FAIL for c in self.checks) else 0

    async def run(self) -> None:
        self.add("config", OK, str(self.config.path))
        await self.homeserver()
        creds = await self.login()
        if creds is not None:
            self.device_store(creds)
            if not (self.unreachable or self.login_failed):
                await self.rooms()
        self.files()
        self.pickle_key()
        await self.database()
        await self.delayed()
        # One check of the admin token serves the erasure and the media checks.
        token = None
        if self.config.erasure.admin_token is not None and not self.unreachable:
            token = await admin_token_check(self.config)
            self.checks.append(token)
        await erasure_checks(self.config, self.add,
                             admin_ok=token is not None and token.status == OK)
        self.checks += await media_checks(self.config, token)

    # --- the homeserver ------------------------------------------------------

    async def homeserver(self) -> None:
        url = self.config.homeserver.url
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
                versions = await _get_json(s, f"{url}/_matrix/client/versions")
                server = await _get_json(s, f"{url}/_synapse/admin/v1/server_version")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.unreachable = True
            self.add("homeserver", FAIL, f"{url} unreachable: {type(exc).__name__}: {exc}")
            return
        spec = versions.get("versions") if versions else None
        if not isinstance(spec, list) or not spec:
            self.unreachable = True
            self.add("homeserver", FAIL, f"{url} answers, but not as a Matrix homeserver")
            return
        name = (f"Synapse {server['server_version']}" if server and "server_version" in server
                else "not Synapse (or its version is hidden)")
        self.add("homeserver", OK, f"{url} reachable: {name}; client API {spec[-1]}")

    async def login(self) -> Credentials | None:
        """The saved login, checked with the homeserver where it answers."""
        try:
            creds = saved_login(self.config)
        except LoginFailed as exc:
            self.login_failed = True
            self.add("login", FAIL, str(exc))
            return None
        if not self.unreachable:
            await self._check_login(creds)
        return creds

    async def _check_login(self, creds: Credentials) -> None:
        config = self.config
        try:
            async with admin_session(config) as admin:
                who = await admin.whoami()
                if who.get("user_id") != config.bot.user_id:
                    self.login_failed = True
                    self.add("login", FAIL, f"the saved login is {who.get('user_id')}, "
                                            f"not {config.bot.user_id}")
                    return
                self.add("login", OK, f"valid for {config.bot.user_id}")
                if who.get("device_id") == creds.device_id:
                    self.add("device", OK, f"{creds.device_id}, the same device as at the "
                                           "first login")
                else:
                    self.add("device", FAIL, f"the homeserver says device "
                                             f"{who.get('device_id')}, the key store is for "
                                             f"{creds.device_id}")
                await self.cross_signing(admin, creds)
        except LoginFailed as exc:
            self.login_failed = True
            self.add("login", FAIL, str(exc))
        except HomeserverUnavailable as exc:
            self.unreachable = True
            self.add("homeserver", FAIL, f"stopped answering: {exc}")

    async def cross_signing(self, admin: Admin, creds: Credentials) -> None:
        """Is the device signed by the bot's identity, and is that identity the one
        whose private keys are in data_dir? Element ignores unsigned devices."""
        identity = (await query_identities(admin.http, [creds.user_id]))[creds.user_id]
        try:
            local = stored_master(self.config.cross_signing_path)
        except IdentityError as exc:
            self.add("cross-signing", FAIL, str(exc))
            return
        if identity.master is None:
            self.add("cross-signing", FAIL, "the bot has no cross-signing identity on the "
                     "homeserver: Element will not share room keys with its device; run "
                     "`lethe login` (or start `lethe run`) to create one")
            return
        if local != identity.master:
            where = ("its private keys are not in " if local is None
                     else "it is not the one whose keys are in ")
            self.add("cross-signing", FAIL, f"the homeserver's identity for the bot "
                     f"(master key {fingerprint(identity.master)}) is not the bot's own: "
                     f"{where}{self.config.cross_signing_path}; set LETHE_PASSWORD and run "
                     "`lethe login --reset-identity`")
            return
        if not identity.device_cross_signed(creds.device_id):
            self.add("cross-signing", FAIL, f"device {creds.device_id} is not signed by the "
                     "bot's identity; start `lethe run` or run `lethe login` to sign it")
            return
        self.add("cross-signing", OK, f"device {creds.device_id} is cross-signed; master "
                 f"key fingerprint {fingerprint(identity.master)} (room admins can compare "
                 "it with what their client shows for the bot)")

    async def rooms(self) -> None:
        try:
            async with admin_session(self.config) as admin:
                room_ids = await admin.joined_rooms()
                if not room_ids:
                    self.add("room", OK, "the bot is in no rooms yet")
                for room_id in room_ids:
                    try:
                        state = await admin.room_state(room_id)
                    except RequestError as exc:
                        self.add("room", FAIL, f"{room_id}: {exc}")
                        continue
                    self.room_power(admin, state)
        except HomeserverUnavailable as exc:
            self.unreachable = True
            self.add("homeserver", FAIL, f"stopped answering: {exc}")

    def room_power(self, admin: Admin, state: RoomState) -> None:
        power = state.power
        if power.can_redact_others(admin.bot):
            self.add("room", OK, f"{state.title}: can redact")
            return
        detail = (f"{state.title}: cannot redact others' messages: the bot's power level is "
                  f"below {power.redact}; give it power level {power.redact}")
        self.add("room", FAIL if state.policy.active else WARN,
                 detail if state.policy.active else f"{detail} (policy off)")

    async def delayed(self) -> None:
        """Whether the homeserver redacts on time by itself while Lethe is stopped."""
        versions = None
        if not self.unreachable:
            url = self.config.homeserver.url
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
                    versions = await _get_json(s, f"{url}/_matrix/client/versions")
            except (TimeoutError, aiohttp.ClientError, OSError):
                versions = None
        self.add(DELAYED, *await delayed_check(self.config, versions))

    # --- local files -----------------------------------------------------------

    def device_store(self, creds: Credentials) -> None:
        store_dir = self.config.store_dir
        ours = store_dir / f"{creds.user_id}_{creds.device_id}.db"
        if not ours.exists():
            self.add("e2ee store", FAIL, f"{ours} is missing: the bot's end-to-end keys are "
                                         "gone (run `lethe run` once to create them)")
            return
        others = sorted(p.name for p in store_dir.glob("*.db") if p != ours)
        self.add("e2ee store", OK, f"{ours}")
        if others:
            self.add("e2ee store", WARN, f"key stores of other devices are there too "
                                         f"({', '.join(others)}): the device changed once")

    def files(self) -> None:
        config = self.config
        expected: list[tuple[Path, int]] = [(config.data_dir, 0o700), (config.store_dir, 0o700)]
        expected += [(p, 0o600) for p in (config.credentials_path, config.cross_signing_path)]
        if (db_path := config.database.path) is not None:
            expected += [(db_path.with_name(db_path.name + s), 0o600) for s in ("", "-wal", "-shm")]
        if config.store_dir.is_dir():
            expected += [(p, 0o600) for p in sorted(config.store_dir.iterdir()) if p.is_file()]
        wrong = [f"{path} is {oct(mode)}, should be {oct(want)}"
                 for path, want in expected
                 if path.exists() and (mode := stat.S_IMODE(path.stat().st_mode)) != want]
        if wrong:
            self.add("file modes", FAIL, "; ".join(wrong))
        else:
            self.add("file modes", OK, f"secrets under {config.data_dir} are owner-only")

    def pickle_key(self) -> None:
        # load_config refused empty, known default and short keys already.
        if os.environ.get(PICKLE_KEY_ENV):
            self.add("pickle key", OK, f"set in ${PICKLE_KEY_ENV}, not a known default")
            return
        mode = stat.S_IMODE(self.config.path.stat().st_mode)
        if mode & 0o077:
            self.add("pickle key", WARN, f"in {self.config.path}, which others may read "
                                         f"({oct(mode)}): chmod 600 it or use "
                                         f"${PICKLE_KEY_ENV}")
        else:
            self.add("pickle key", OK, "set in the config file (owner-only), not a known "
                                       "default")

    async def database(self) -> None:
        if self.config.database.absent:
            self.add("database", WARN, f"{self.config.database} does not exist yet (the bot "
                                       "creates it on its first run)")
            return
        if not self.config.database.is_sqlite and not await self.database_connection():
            return
        try:
            async with readonly_store(self.config, required=True) as store:
                assert store is not None
                counts = await pending_by_status(store)
        except StoreError as exc:
            self.add("database", FAIL, str(exc))
            return
        pending = counts["waiting"] + counts["in_flight"] + counts["parked"]
        self.add("database", OK, f"schema v{SCHEMA_VERSION}, {pending} redaction(s) pending")
        if counts["parked"]:
            self.add("database", WARN, f"{counts['parked']} redaction(s) overdue for lack of "
                                       "power (see the rooms above)")
        if counts["failed"]:
            self.add("database", WARN, f"{counts['failed']} redaction(s) the homeserver never "
                                       "confirmed (`lethe pending` lists them as failed)")


    async def database_connection(self) -> bool:
        """PostgreSQL: reachable, its version, the schema's, a round trip's time."""
        try:
            found = await probe_postgres(self.config.database)
        except StoreError as exc:  # names the problem, the password masked
            self.add("database", FAIL, str(exc))
            return False
        self.add("database", OK, f"{self.config.database.shown}: PostgreSQL "
                 f"{found.server_version}, schema v{found.schema_version}, round trip "
                 f"{found.round_trip_ms:.1f} ms")
        return True


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    # No token: these endpoints need none, and Synapse rejects a bad one even here.
    async with session.get(url) as resp:
        if resp.status != 200:
            return None
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


@click.command()
@config_option
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this installation: homeserver, login, device, key store, file modes, pickle
    key, database, and the bot's power in each room. Exit 0 when all is well."""
    config = cli_config(ctx)

    async def go() -> Doctor:
        doc = Doctor(config)
        await doc.run()
        return doc

    doc = run_async(go)
    if as_json:
        emit_json({"ok": doc.exit_code == 0,
                   "checks": [c.__dict__ for c in doc.checks]})
    else:
        width = max(len(c.name) for c in doc.checks)
        for check in doc.checks:
            say(f"{check.status:<5} {check.name:<{width}}  {check.detail}")
    ctx.exit(doc.exit_code)
