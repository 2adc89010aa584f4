"""Login and restore: one device, one E2EE store, kept across restarts.

The first run logs in with the password and saves the access token and device
id (mode 0600) under ``data_dir``; later runs restore that login so the device
id, and with it every E2EE session, stays the same.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aiohttp import ClientResponse
from nio import AsyncClient, AsyncClientConfig, LoginResponse, SyncResponse, WhoamiResponse

from bot.config import Config
from bot.matrix.api import MatrixHttp
from bot.matrix.credentials import Credentials, LoginFailed, load_credentials, save_credentials
from bot.matrix.crosssigning import IdentityError, OwnIdentity, ensure_identity
from bot.matrix.events import ephemeral_by_room
from bot.matrix.files import secure_dir

log = logging.getLogger(__name__)


class LetheClient(AsyncClient):  # type: ignore[misc]  # nio has no type stubs
    """nio's client, keeping each room's ephemeral events of the last ``/sync`` as raw
    JSON. nio validates an ``m.receipt`` event as a whole and drops every receipt of
    the room when one of them is malformed (one remote server is enough), so Lethe
    reads receipts from the raw JSON, each on its own (bot/matrix/events.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_ephemeral: dict[str, object] = {}

    async def create_matrix_response(
        self,
        response_class: type,
        transport_response: ClientResponse,
        data: tuple[Any, ...] | None = None,
        save_to: Any = None,
    ) -> Any:
        if response_class is not SyncResponse:
            return await super().create_matrix_response(
                response_class, transport_response, data, save_to)
        # What nio does for a sync (parse the body, then from_dict), keeping the part
        # of the raw body Lethe reads itself. Only the sync loop syncs, one at a time.
        parsed = await self.parse_body(transport_response)
        self.last_ephemeral = ephemeral_by_room(parsed)
        resp = SyncResponse.from_dict(parsed)  # type: ignore[attr-defined]
        resp.transport_response = transport_response
        return resp


def make_client(config: Config, device_id: str | None = None) -> LetheClient:
    secure_dir(config.data_dir)
    secure_dir(config.store_dir)
    client_config = AsyncClientConfig(
        store_sync_tokens=False,  # Lethe stores the token with the events it covers
        encryption_enabled=True,
        pickle_key=config.e2ee.pickle_key,
        max_limit_exceeded=3,
        max_timeouts=2,
        request_timeout=40,
    )
    return LetheClient(
        config.homeserver.url,
        config.bot.user_id,
        device_id=device_id or "",
        store_path=str(config.store_dir),
        config=client_config,
    )


def lock_down_store(config: Config) -> None:
    """The key store holds private keys: owner-only, whatever the umask was."""
    secure_dir(config.store_dir)
    for entry in config.store_dir.iterdir():
        if entry.is_file():
            os.chmod(entry, 0o600)


async def login(config: Config) -> tuple[AsyncClient, Credentials]:
    """Restore the saved login, or log in with the password on first run."""
    creds = load_credentials(config.credentials_path)
    if creds is not None:
        if creds.user_id != config.bot.user_id:
            raise LoginFailed(
                f"{config.credentials_path} belongs to {creds.user_id}, but bot.user_id is "
                f"{config.bot.user_id}; use another data_dir"
            )
        client = make_client(config, creds.device_id)
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
        try:
            who = await client.whoami()
        except BaseException:
            await client.close()
            raise
        if not isinstance(who, WhoamiResponse):
            await client.close()
            raise LoginFailed(
                f"the saved login for {creds.user_id} was refused "
                f"({getattr(who, 'status_code', '?')}); run `lethe login` again"
            )
        lock_down_store(config)
        log.info("restored login for %s, device %s", creds.user_id, creds.device_id)
        return client, creds
    if not config.bot.password:
        raise LoginFailed(
            "no saved login and no password: set bot.password or LETHE_PASSWORD for the "
            "first login"
        )
    client = make_client(config)
    try:
        resp = await client.login(config.bot.password, device_name=config.bot.device_name)
    except BaseException:
        await client.close()
        raise
    if not isinstance(resp, LoginResponse):
        await client.close()
        raise LoginFailed(
            f"login as {config.bot.user_id} failed: {getattr(resp, 'message', resp)}"
        )
    creds = Credentials(resp.user_id, resp.device_id, resp.access_token, config.homeserver.url)
    save_credentials(config.credentials_path, creds)
    lock_down_store(config)
    log.info("logged in as %s, new device %s", creds.user_id, creds.device_id)
    return client, creds


async def ensure_own_identity(
    config: Config, client: AsyncClient, http: MatrixHttp, creds: Credentials,
    *, reset: bool = False,
) -> OwnIdentity:
    """Cross-sign this device with the bot's identity (created on first use)."""
    if client.olm is None:
        raise IdentityError("end-to-end encryption is not loaded; the key store is missing")
    return await ensure_identity(
        http,
        user_id=creds.user_id,
        device_id=creds.device_id,
        device_ed25519=client.olm.account.identity_keys["ed25519"],
        key_path=config.cross_signing_path,
        pickle_key=config.e2ee.pickle_key,
        password=config.bot.password,
        reset=reset,
    )
