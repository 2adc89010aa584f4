"""Matrix people for the demo and the tests: a real E2EE matrix-nio client per person,
with its own device and key store, plus deadline-based waiting helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import AsyncClient, AsyncClientConfig, RoomCreateResponse, RoomSendResponse

from bot.devtools.localsynapse import LocalSynapse


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Wait for ``predicate`` with a deadline; fail the test with ``what`` if it passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def stays(
    predicate: Callable[[], Awaitable[bool]], duration: float, interval: float = 0.25
) -> bool:
    """True if ``predicate`` holds for the whole of ``duration`` seconds (a short window
    for asserting that something does *not* happen too early)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not await predicate():
            return False
        await asyncio.sleep(interval)
    return await predicate()


class Person:
    def __init__(self, hs: LocalSynapse, localpart: str, store: Path) -> None:
        user = hs.register(localpart)
        self.user_id = user.user_id
        self.token = user.access_token
        self.hs = hs
        store.mkdir(parents=True, exist_ok=True)
        self.client = AsyncClient(
            hs.base_url,
            user.user_id,
            device_id=user.device_id,
            store_path=str(store),
            config=AsyncClientConfig(
                encryption_enabled=True, store_sync_tokens=True, max_timeouts=None
            ),
        )
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self._sync_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self._session = aiohttp.ClientSession()
        self._sync_task = asyncio.create_task(
            self.client.sync_forever(timeout=1000, full_state=True)
        )

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self.client.close()

    # --- raw API -----------------------------------------------------------

    async def api(self, method: str, path: str, body: Any = None,
                  params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        assert self._session is not None
        async with self._session.request(
            method, self.hs.base_url + "/_matrix/client/v3" + path, json=body, params=params,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as resp:
            return resp.status, await resp.json(content_type=None) or {}

    # --- rooms -------------------------------------------------------------

    async def create_room(
        self, invite: list[str] = (), *, encrypted: bool = True,  # type: ignore[assignment]
        power: dict[str, int] | None = None, is_direct: bool = False,
        state: list[dict[str, Any]] = (),  # type: ignore[assignment]
    ) -> str:
        initial_state = list(state)
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        override = {"users": power} if power else None
        resp = await self.client.room_create(
            invite=list(invite), initial_state=initial_state,
            power_level_override=override, is_direct=is_direct,
        )
        assert isinstance(resp, RoomCreateResponse), resp
        room_id = str(resp.room_id)
        await eventually(lambda: room_id in self.client.rooms, what="room in own sync")
        return room_id

    async def join(self, room_id: str) -> None:
        await self.client.join(room_id)
        await eventually(lambda: room_id in self.client.rooms, what=f"{self.user_id} joined")

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.client.room_invite(room_id, user_id)

    async def send(self, room_id: str, body: str, *, relates_to: dict[str, Any] | None = None,
                   msgtype: str = "m.text") -> str:
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        if relates_to:
            content["m.relates_to"] = relates_to
        return await self.send_event(room_id, "m.room.message", content)

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        await eventually(lambda: room_id in self.client.rooms, what="room known before send")
        resp = await self.client.room_send(room_id, event_type, content,
                                           ignore_unverified_devices=True)
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    async def react(self, room_id: str, event_id: str, key: str = "+1") -> str:
        return await self.send_event(room_id, "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": event_id, "key": key}})

    async def edit(self, room_id: str, event_id: str, body: str) -> str:
        return await self.send_event(room_id, "m.room.message", {
            "msgtype": "m.text", "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        })

    async def thread_reply(self, room_id: str, root: str, body: str) -> str:
        return await self.send(room_id, body, relates_to={
            "rel_type": "m.thread", "event_id": root, "is_falling_back": True,
            "m.in_reply_to": {"event_id": root}})

    async def receipt(self, room_id: str, event_id: str, *, thread_id: str | None = None,
                      private: bool = False) -> None:
        kind = "m.read.private" if private else "m.read"
        body = {"thread_id": thread_id} if thread_id else {}
        status, data = await self.api(
            "POST", f"/rooms/{quote(room_id)}/receipt/{kind}/{quote(event_id)}", body)
        assert status == 200, data

    async def put_state(self, room_id: str, event_type: str, content: dict[str, Any]) -> int:
        status, _ = await self.api(
            "PUT", f"/rooms/{quote(room_id)}/state/{quote(event_type)}/", content)
        return status

    async def get_state(self, room_id: str, event_type: str) -> dict[str, Any] | None:
        status, data = await self.api(
            "GET", f"/rooms/{quote(room_id)}/state/{quote(event_type)}/")
        return data if status == 200 else None

    async def set_power(self, room_id: str, user_id: str, level: int) -> None:
        current = await self.get_state(room_id, "m.room.power_levels") or {}
        users = dict(current.get("users", {}))
        users[user_id] = level
        current["users"] = users
        assert await self.put_state(room_id, "m.room.power_levels", current) == 200

    async def event(self, room_id: str, event_id: str) -> dict[str, Any]:
        status, data = await self.api(
            "GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")
        assert status == 200, data
        return data

    async def is_redacted(self, room_id: str, event_id: str) -> bool:
        event = await self.event(room_id, event_id)
        return not event.get("content") and "redacted_because" in event.get("unsigned", {})

    async def notices(self, room_id: str, limit: int = 50) -> list[str]:
        """Bodies of others' messages (the bot's notices) this person can read, decrypted by
        nio; never this person's own."""
        status, data = await self.api(
            "GET", f"/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": str(limit)})
        assert status == 200, data
        texts = []
        for raw in data.get("chunk", []):
            if raw.get("sender") == self.user_id:
                continue  # this person's own messages (a command names what it asks for)
            text = await self._text_of(raw)
            if text is not None:
                texts.append(text)
        return texts

    async def _text_of(self, raw: dict[str, Any]) -> str | None:
        from nio import Event, MegolmEvent

        if raw.get("type") == "m.room.encrypted":
            parsed = Event.parse_encrypted_event(raw)
            if isinstance(parsed, MegolmEvent):
                try:
                    decrypted = self.client.decrypt_event(parsed)
                except Exception:
                    return None
                return getattr(decrypted, "body", None)
            return None
        if raw.get("type") == "m.room.message":
            body = raw.get("content", {}).get("body")
            return body if isinstance(body, str) else None
        return None

    async def wait_notice(self, room_id: str, needle: str, timeout: float = 20.0) -> str:
        found: list[str] = []

        async def seen() -> bool:
            for text in await self.notices(room_id):
                if needle.lower() in text.lower():
                    found.append(text)
                    return True
            return False

        await eventually(seen, timeout, interval=0.3, what=f"a notice containing {needle!r}")
        return found[0]
