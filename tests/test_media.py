"""Media go with their message, against a real Synapse: in an encrypted room, with a
homeserver admin's token, the files and thumbnails of the messages Lethe expires
answer 404, and nothing else is deleted (a file of a message not yet due, one sent
while the policy was off). The database holds ids, never text or file names.
Without a token nothing is deleted and status says so; a token the homeserver
refuses keeps the files due, and a restart with a good one deletes them."""

from __future__ import annotations

import io
import logging
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import load_config
from bot.devtools.localsynapse import LocalSynapse
from bot.engine.model import MediaCounts
from tests.cli_harness import lethe_cli, out_json, scheduled
from tests.harness import (
    BotHandle,
    Person,
    all_redacted,
    bot_room,
    eventually,
    stays,
    unique,
    write_bot_config,
)
from tests.test_restart_privacy import persisted

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)


def token_file(directory: Path, token: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "admin-token"
    path.write_text(token)
    os.chmod(path, 0o600)
    return path


def admin_token(synapse: LocalSynapse) -> str:
    return synapse.register(unique("admin"), admin=True).access_token


def media_bot(synapse: LocalSynapse, directory: Path, token: str) -> BotHandle:
    path = token_file(directory / "secrets", token)
    return BotHandle(write_bot_config(synapse, directory / "bot",
                                      erasure={"admin_token_file": str(path)}))


async def upload(person: Person, data: bytes, content_type: str, filename: str, *,
                 encrypt: bool) -> tuple[str, dict[str, Any]]:
    """The file's mxc URI and, for an encrypted upload, its decryption info."""
    resp, keys = await person.client.upload(io.BytesIO(data), content_type, filename,
                                            encrypt=encrypt, filesize=len(data))
    uri = getattr(resp, "content_uri", None)
    assert isinstance(uri, str) and uri.startswith("mxc://"), resp
    return uri, keys or {}


async def send_image(person: Person, room: str, body: str) -> tuple[str, list[str]]:
    """An m.image (uploaded in clear, as the spec allows) with info.thumbnail_url."""
    image, _ = await upload(person, PNG, "image/png", body, encrypt=False)
    thumb, _ = await upload(person, PNG[:40], "image/png", "thumb.png", encrypt=False)
    event = await person.send_event(room, "m.room.message", {
        "msgtype": "m.image", "body": body, "url": image,
        "info": {"mimetype": "image/png", "thumbnail_url": thumb,
                 "thumbnail_info": {"mimetype": "image/png"}}})
    return event, [image, thumb]


async def send_file(person: Person, room: str, body: str, *,
                    thumbnail: bool = False) -> tuple[str, list[str]]:
    """An m.file encrypted as Element encrypts attachments (file.url), with an
    encrypted thumbnail (info.thumbnail_file.url) if asked."""
    uri, keys = await upload(person, f"secret {body}".encode(), "application/pdf", body,
                             encrypt=True)
    info: dict[str, Any] = {"mimetype": "application/pdf"}
    uris = [uri]
    if thumbnail:
        thumb, thumb_keys = await upload(person, PNG, "image/png", "t.png", encrypt=True)
        info["thumbnail_file"] = {"url": thumb, **thumb_keys}
        uris.append(thumb)
    event = await person.send_event(room, "m.room.message", {
        "msgtype": "m.file", "body": body, "file": {"url": uri, **keys}, "info": info})
    return event, uris


async def download_status(person: Person, mxc: str) -> int:
    """GET /_matrix/client/v1/media/download/{server}/{id}, authenticated as ``person``."""
    server_and_id = mxc.removeprefix("mxc://")
    async with aiohttp.ClientSession() as session, session.get(
        f"{person.hs.base_url}/_matrix/client/v1/media/download/{server_and_id}",
        headers={"Authorization": f"Bearer {person.token}"},
    ) as resp:
        await resp.read()
        return resp.status


def all_gone(person: Person, uris: list[str]) -> Any:
    async def check() -> bool:
        return all([await download_status(person, uri) == 404 for uri in uris])
    return check


def all_there(person: Person, uris: list[str]) -> Any:
    async def check() -> bool:
        return all([await download_status(person, uri) == 200 for uri in uris])
    return check


def database_bytes(handle: BotHandle) -> bytes:
    db = handle.config.database.path
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def media_rows(handle: BotHandle) -> list[tuple[Any, ...]]:
    with sqlite3.connect(handle.config.database.path) as conn:
        return conn.execute("SELECT * FROM media").fetchall()


async def test_files_of_expired_encrypted_messages_are_deleted_and_nothing_else(
        people, synapse: LocalSynapse, tmp_path: Path) -> None:
    handle = media_bot(synapse, tmp_path, admin_token(synapse))
    try:
        alice, (bob,), room = await bot_room(people, handle, "bob")
        # Sent while the policy is off, and under a policy that expires it in an hour.
        _, off_files = await send_file(alice, room, "off.pdf")
        await alice.send(room, "!lethe after-send 1h")
        await alice.wait_notice(room, "changed the retention policy: after-send 1h")
        later, later_files = await send_image(alice, room, "later.png")
        await alice.send(room, "!lethe after-send 4s")
        await alice.wait_notice(room, "changed the retention policy: after-send 4s")
        canary = f"canary-media-{secrets.token_hex(6)}"
        image, image_files = await send_image(alice, room, f"{canary}.png")
        attachment, attachment_files = await send_file(bob, room, f"{canary}-plans.pdf",
                                                       thumbnail=True)
        assert (await bob.event(room, image))["type"] == "m.room.encrypted"
        expired_files = image_files + attachment_files
        assert await all_there(bob, expired_files)()

        await scheduled(handle, later, image, attachment)
        stored = database_bytes(handle)
        assert canary.encode() not in stored and b"later.png" not in stored
        for uri in expired_files + later_files:
            assert uri.split("/")[-1].encode() in stored  # the ids, and only those
        for uri in off_files:
            assert uri.split("/")[-1].encode() not in stored  # never tracked

        await eventually(all_redacted(bob, room, image, attachment), 20, what="redactions")
        await eventually(all_gone(bob, expired_files), 20, what="the files answering 404")
        assert await all_there(bob, later_files + off_files)(), "something else was deleted"
        assert canary.encode() not in database_bytes(handle)

        await alice.send(room, "!lethe status")
        status = await alice.wait_notice(room, "Files: 4 deleted")
        assert "0 waiting to be deleted" in status and "2 kept until their message expires" \
            in status
        assert handle.bot is not None and handle.bot.engine is not None
        assert await handle.bot.engine.media_counts(room) == MediaCounts(held=2, deleted=4)

        rooms = out_json(await lethe_cli(handle.config, "rooms", "list", "--json"))
        media = next(r for r in rooms if r["room_id"] == room)["media"]
        assert media == {"deletion": True, "held": 2, "due": 0, "deleted": 4, "remote": 0}
        doctor = await lethe_cli(handle.config, "doctor", "--json")
        checks = {(c["name"], c["status"]): c["detail"] for c in out_json_any(doctor)}
        assert "a homeserver admin's" in checks[("admin token", "ok")]
        assert "4 deleted" in checks[("media", "ok")]
    finally:
        await handle.stop()


def out_json_any(result: Any) -> list[dict[str, Any]]:
    """`doctor --json`'s checks, whatever its exit code (other checks may warn)."""
    import json

    return list(json.loads(result.stdout)["checks"])


async def test_without_a_token_files_stay_and_status_says_so(people, lethe) -> None:
    alice, (bob,), room = await bot_room(people, lethe, "bob", policy="after-send 2s")
    image, files = await send_image(alice, room, "kept.png")
    await eventually(all_redacted(bob, room, image), 20, what="the redaction")
    assert await stays(all_there(bob, files), 3), "a file was deleted without a token"
    assert media_rows(lethe) == []  # not even the ids are kept

    await alice.send(room, "!lethe status")
    status = await alice.wait_notice(room, "Files: uploaded files")
    assert "stay on the homeserver" in status and "admin" in status
    doctor = await lethe_cli(lethe.config, "doctor", "--json")
    media = [c for c in out_json_any(doctor) if c["name"] == "media"]
    assert [c["status"] for c in media] == ["warn"]
    assert "LETHE_ADMIN_TOKEN" in media[0]["detail"]
    assert not [c for c in out_json_any(doctor) if c["name"] == "admin token"]
    listed = await lethe_cli(lethe.config, "rooms", "list")
    assert "Files, all rooms: uploaded files (images, attachments) stay" \
        in listed.stdout


async def test_a_refused_token_keeps_files_due_and_a_restart_deletes_them(
        people, synapse: LocalSynapse, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Durable: the files are due from the redaction on, in the database. A token
    that is not an admin's deletes nothing (logged once, doctor says why); the next
    start with an admin's deletes them."""
    caplog.set_level(logging.INFO)
    not_admin = synapse.register(unique("notadmin")).access_token
    handle = media_bot(synapse, tmp_path, not_admin)
    try:
        alice, (bob,), room = await bot_room(people, handle, "bob", policy="after-send 2s")
        event, files = await send_file(alice, room, "durable.pdf", thumbnail=True)
        await eventually(all_redacted(bob, room, event), 20, what="the redaction")
        assert handle.bot is not None and handle.bot.engine is not None
        engine = handle.bot.engine

        async def due() -> bool:
            return (await engine.media_counts(room)).due == 2
        await eventually(due, 20, what="the files due")
        await eventually(lambda: engine.media_stats is not None and engine.media_stats.refused,
                         20, what="the refusal")
        assert await all_there(bob, files)()
        refusals = [r for r in caplog.records if "refuses to delete media" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
        assert not_admin not in caplog.text

        doctor = await lethe_cli(handle.config, "doctor", "--json")
        assert doctor.exit_code == 1, doctor.output
        checks = {c["name"]: c for c in out_json_any(doctor)}
        assert checks["admin token"]["status"] == "FAIL"
        assert "not a homeserver admin's" in checks["admin token"]["detail"]
        assert not_admin not in doctor.output
        await handle.stop()

        token_file(tmp_path / "secrets", admin_token(synapse))
        handle = BotHandle(load_config(handle.config.path))
        await handle.start()
        await eventually(all_gone(bob, files), 30, what="the files deleted after the restart")
        assert handle.bot is not None and handle.bot.engine is not None
        engine = handle.bot.engine

        async def settled() -> bool:  # the 404 comes a moment before the row is settled
            return await engine.media_counts(room) == MediaCounts(deleted=2)
        await eventually(settled, 10, what="the files counted as deleted")
    finally:
        await handle.stop()


async def test_a_file_in_a_gap_is_decrypted_from_history_and_deleted(
        people, synapse: LocalSynapse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent while the bot was stopped, and older than the sync's timeline: the bot
    reads it from /messages as ciphertext, decrypts it for its files, and deletes
    them with the message."""
    handle = media_bot(synapse, tmp_path, admin_token(synapse))
    try:
        alice, (bob,), room = await bot_room(people, handle, "bob", policy="after-send 3s")
        await persisted(handle, bob, room)
        await handle.stop()
        event, files = await send_file(alice, room, "in-the-gap.pdf", thumbnail=True)
        after = [await alice.send(room, f"after the file {i}") for i in range(15)]
        monkeypatch.setattr("bot.front.sync.SYNC_FILTER", {"room": {"timeline": {"limit": 10}}})
        handle = BotHandle(handle.config)
        await handle.start()
        await eventually(all_redacted(bob, room, event, *after), 30, what="the gap redacted")
        await eventually(all_gone(bob, files), 20, what="the gap's files deleted")
    finally:
        await handle.stop()
