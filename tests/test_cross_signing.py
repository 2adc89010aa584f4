"""The bot's cross-signing identity against a real Synapse: created on first start,
reused on restart, signing a new device, sealed on disk, and a lost key store
detected with its way out (`lethe login --reset-identity`)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat

from bot.matrix.crosssigning import fingerprint, load_keys, read_identity
from tests.cli_harness import lethe_cli, one_line_error
from tests.harness import BotHandle, Person


async def server_identity(person: Person, user_id: str) -> tuple[dict, object]:
    status, body = await person.api("POST", "/keys/query", {"device_keys": {user_id: []}})
    assert status == 200, body
    return body, read_identity(body, user_id)


def doctor_check(result, name: str) -> dict:
    return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == name)


async def test_first_start_creates_a_sealed_identity_and_signs_the_device(
        people, lethe: BotHandle) -> None:
    alice = await people("alice")
    bot = await lethe.start()
    assert bot.creds is not None
    body, identity = await server_identity(alice, lethe.user_id)
    assert identity.master is not None, body
    assert identity.device_cross_signed(bot.creds.device_id), body
    # The master key the homeserver serves is the one sealed in data_dir.
    path = lethe.config.cross_signing_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = load_keys(path, lethe.user_id, lethe.config.e2ee.pickle_key)
    assert keys is not None and keys.public("master") == identity.master
    text = path.read_text()
    for seed in keys.seeds.values():  # no private key in clear, in any encoding
        assert base64.b64encode(seed).decode().rstrip("=") not in text
        assert seed.hex() not in text
    device_id = bot.creds.device_id

    # A restart reuses the identity; a new device (lost login) is signed by it too.
    await lethe.stop()
    await lethe.start()
    _, again = await server_identity(alice, lethe.user_id)
    assert again.master == identity.master
    await lethe.stop()
    lethe.config.credentials_path.unlink()
    shutil.rmtree(lethe.config.store_dir)
    bot = await lethe.start()
    assert bot.creds is not None and bot.creds.device_id != device_id
    _, third = await server_identity(alice, lethe.user_id)
    assert third.master == identity.master
    assert third.device_cross_signed(bot.creds.device_id)

    result = await lethe_cli(lethe.config, "doctor", "--json")
    check = doctor_check(result, "cross-signing")
    assert check["status"] == "ok", check
    assert fingerprint(identity.master) in check["detail"]


async def test_a_lost_key_store_is_reported_and_reset_identity_recovers(
        people, lethe: BotHandle, caplog) -> None:
    alice = await people("alice")
    await lethe.start()
    _, first = await server_identity(alice, lethe.user_id)
    await lethe.stop()
    lethe.config.cross_signing_path.unlink()

    # The bot still runs (redaction needs no identity) and says what is wrong.
    caplog.clear()
    bot = await lethe.start()
    assert "lethe login --reset-identity" in caplog.text
    assert bot.creds is not None
    result = await lethe_cli(lethe.config, "doctor", "--json")
    assert result.exit_code == 1
    check = doctor_check(result, "cross-signing")
    assert check["status"] == "FAIL" and "--reset-identity" in check["detail"], check
    await lethe.stop()

    # Without the password, the reset says exactly what is missing.
    config_without_password = lethe.config.path.read_text()
    try:
        data = json.loads(json.dumps(__import__("yaml").safe_load(config_without_password)))
        data["bot"].pop("password")
        lethe.config.path.write_text(__import__("yaml").safe_dump(data))
        result = await lethe_cli(lethe.config, "login", "--reset-identity")
        assert result.exit_code == 2
        assert "LETHE_PASSWORD" in one_line_error(result)
    finally:
        lethe.config.path.write_text(config_without_password)

    result = await lethe_cli(lethe.config, "login", "--reset-identity")
    assert result.exit_code == 0, result.output
    _, reset = await server_identity(alice, lethe.user_id)
    assert reset.master is not None and reset.master != first.master
    assert reset.device_cross_signed(bot.creds.device_id)
    assert fingerprint(reset.master) in result.stdout
    result = await lethe_cli(lethe.config, "doctor", "--json")
    assert doctor_check(result, "cross-signing")["status"] == "ok"
