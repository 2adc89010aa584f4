"""The Lethe bot: a nio client in front of the retention engine. This module is its
lifecycle; the work is done by the sync loop (bot/front/sync.py, with gaps caught up
by bot/front/catchup.py) and the action worker (bot/front/actions.py), and every
text it sends comes from bot/front/texts.py.

Tasks it owns (all cancelled on stop, bot/lifecycle.py): the sync loop, the action
worker with its join retries, the engine's scheduler with its redaction workers (and
its media deletion, with an admin token), and the metrics server when configured.
The sync loop persists each sync (events, receipts, members, policies and the sync
token in one transaction) and hands follow-up work to the action worker through a
queue.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nio import AsyncClient

from bot.config import Config
from bot.engine.engine import Engine, EngineConfig
from bot.engine.power import PowerState
from bot.engine.redactor import ECHO_WAIT_MS
from bot.front.actions import ActionWorker
from bot.front.catchup import BACKFILL_PAGE_SIZE, BACKFILL_PAGES, CatchUp, nio_decrypter
from bot.front.client import ensure_own_identity, login
from bot.front.defaults import BotDefaults
from bot.front.joins import META_KEY as JOINS_META
from bot.front.joins import JoinRetries, load_pending
from bot.front.reader import SyncReader
from bot.front.sync import SyncLoop
from bot.lifecycle import FrontLife
from bot.matrix.api import HomeserverUnavailable, MatrixHttp
from bot.matrix.credentials import Credentials
from bot.matrix.crosssigning import IdentityError, OwnIdentity
from bot.matrix.files import secure_dir
from bot.matrix.policy_state import OWN_WRITES_KEY, OwnWrites
from bot.matrix.transport import AdminMediaTransport, HttpTransport
from bot.matrix.trust import DeviceTrust
from bot.runlock import BOT_LOCK

log = logging.getLogger(__name__)


class LetheBot:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client: AsyncClient | None = None
        self.creds: Credentials | None = None
        self.engine: Engine | None = None
        self.http: MatrixHttp | None = None
        # Synapse's admin API with the admin token, when media of expired messages go.
        self.media: AdminMediaTransport | None = None
        self.reader = SyncReader(config.bot.user_id, config.command_prefix)
        self.life = FrontLife()
        self.actions = ActionWorker(self)
        self.defaults = BotDefaults(self)  # a person's defaults, policy.on_join
        self.sync_loop: SyncLoop | None = None  # made on start, with the HTTP client
        # lethe.db holds no sync yet but a login was saved: the database was lost (or
        # this is the first run after `lethe login`). The first sync rebuilds the
        # schedule from each joined room's history and runs no command.
        self.rebuild = False
        self.synced = asyncio.Event()  # set after each persisted sync (tests wait on it)
        self.sync_count = 0
        self.last_sync_at: float | None = None
        self.tracked_total = 0  # events put on a schedule by this process (metrics)
        self.own_writes = OwnWrites()
        self.identity: OwnIdentity | None = None
        self.trust: DeviceTrust | None = None
        self.joins = JoinRetries()

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        # Before anything touches the key store or the database: one process per data_dir.
        secure_dir(self.config.data_dir)
        self.life.hold(self.config.data_dir / BOT_LOCK, "lethe run")
        had_login = self.config.credentials_path.exists()
        self.client, self.creds = await login(self.config)
        self.http = MatrixHttp(self.config.homeserver.url, self.creds.access_token)
        self.media = AdminMediaTransport.from_config(self.config.homeserver.url,
                                                     self.config.erasure)
        self.engine = engine = await self.life.open_engine(
            self.config.database,
            HttpTransport(self.http, own_user=self.config.bot.user_id),
            EngineConfig(
                self.config.bot.user_id,
                self.config.ignore_readers,
                self.config.default_cap_ms,
                self.config.workers,
                echo_wait_ms=ECHO_WAIT_MS,
                delete_media=self.media is not None,
                ledger_ms=self.config.erasure.ledger_ms,
                delayed_redactions=self.config.delayed_redactions,
                bounds=self.config.bounds,
            ),
            self.actions.on_park,
            media=self.media,
        )
        self.own_writes = OwnWrites(await engine.get_meta(OWN_WRITES_KEY))
        self.rebuild = had_login and await engine.sync_token() is None
        if self.rebuild:
            log.info("lethe.db holds no schedule but a login is saved: rebuilding the "
                     "schedule of every joined room from its history (up to %d events "
                     "per room); commands seen while rebuilding are not run",
                     BACKFILL_PAGES * BACKFILL_PAGE_SIZE)
        await self.life.start_metrics(self.config.metrics, self)
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        await self._cross_sign()
        self.trust = DeviceTrust(self.config.e2ee.trust, self.http,
                                 self.config.pinned_identities_path)
        # What the last run was retrying: the first sync (full state) lists every
        # invite still open, and each is tried again from there.
        self.joins = JoinRetries(load_pending(await engine.get_meta(JOINS_META)))
        # Gaps are decrypted only for the files their messages point at.
        catch_up = CatchUp(self.http, engine, self.config.bot.user_id,
                           nio_decrypter(self.client) if self.media is not None else None)
        self.sync_loop = SyncLoop(self, self.actions, catch_up)
        self.life.own(self.sync_loop.run(), name="lethe-sync")
        self.life.own(self.actions.run(), name="lethe-actions")

    async def _cross_sign(self) -> None:
        """Sign this device with the bot's cross-signing identity (made on first start).

        A failure is logged, not fatal: redaction, the promise people depend on, does
        not need it; Element users would miss the bot's notices and commands."""
        assert self.client is not None and self.http is not None and self.creds is not None
        try:
            self.identity = await ensure_own_identity(self.config, self.client, self.http,
                                                      self.creds)
        except (IdentityError, HomeserverUnavailable) as exc:
            log.error("the bot's device is not cross-signed, so Element will not share "
                      "room keys with it: %s", exc)

    async def stop(self) -> None:
        await self.life.stop()
        if self.http is not None:
            await self.http.close()
        if self.media is not None:
            await self.media.close()
        if self.client is not None:
            await self.client.close()
        self.life.release()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a task fails for good."""
        await self.life.run_until(self.start, self.stop, stop)

    def synced_one(self, tracked: int) -> None:
        """A sync was stored, with ``tracked`` events put on a schedule."""
        self.sync_count += 1
        self.tracked_total += tracked
        self.last_sync_at = time.monotonic()
        self.synced.set()
        self.synced = asyncio.Event()

    def power(self, room_id: str) -> PowerState:
        return self.reader.power(room_id)

    @property
    def sync_alive(self) -> bool:
        return self.last_sync_at is not None and time.monotonic() - self.last_sync_at < 120

    @property
    def scheduler_alive(self) -> bool:
        return self.engine is not None and self.engine.scheduler_alive
