"""Cross-signing values without a homeserver: the sealed key file, and reading
identities from /keys/query answers that may be forged or malformed."""

from __future__ import annotations

import copy
from typing import Any

import nacl.signing
import pytest
from signedjson.key import decode_signing_key_base64
from signedjson.sign import sign_json

from bot.matrix.crosssigning import (
    IdentityError,
    SigningKeys,
    _b64,
    load_keys,
    read_identity,
    save_keys,
    stored_master,
)
from bot.matrix.trust import IdentityPins, trusted_devices

USER = "@alice:example.org"
PICKLE = "a-long-pickle-key-0123456789"


def device(keys: SigningKeys | None, device_id: str = "DEV") -> tuple[dict[str, Any], str]:
    seed = nacl.signing.SigningKey.generate()
    ed = _b64(bytes(seed.verify_key))
    dev: dict[str, Any] = {
        "user_id": USER, "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{device_id}": ed, f"curve25519:{device_id}": "x"},
    }
    own = decode_signing_key_base64("ed25519", device_id, _b64(bytes(seed)))
    dev = sign_json(dev, USER, own)
    if keys is not None:
        dev = sign_json(dev, USER, keys.signer("self_signing"))
    return dev, ed


def query_body(keys: SigningKeys, devices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "device_keys": {USER: devices},
        "master_keys": {USER: keys.key_object(USER, "master")},
        "self_signing_keys": {USER: keys.key_object(USER, "self_signing")},
    }


def test_a_device_signed_through_the_chain_is_cross_signed() -> None:
    keys = SigningKeys.generate()
    signed, ed = device(keys, "GOOD")
    unsigned, _ = device(None, "PLAIN")
    identity = read_identity(query_body(keys, {"GOOD": signed, "PLAIN": unsigned}), USER)
    assert identity.master == keys.public("master")
    assert identity.device_cross_signed("GOOD", ed)
    assert not identity.device_cross_signed("GOOD", "another-key")
    assert not identity.device_cross_signed("PLAIN")
    assert set(identity.devices) == {"GOOD", "PLAIN"}


def test_forgeries_do_not_count() -> None:
    keys = SigningKeys.generate()
    other = SigningKeys.generate()
    # Device signed by somebody else's self-signing key.
    forged, _ = device(other, "FORGED")
    # Self-signing key not signed by the master key.
    body = query_body(keys, {"FORGED": forged})
    assert not read_identity(body, USER).device_cross_signed("FORGED")
    swapped = query_body(keys, {})
    swapped["self_signing_keys"][USER] = other.key_object(USER, "self_signing")
    dev, _ = device(other, "D")
    swapped["device_keys"][USER]["D"] = dev
    identity = read_identity(swapped, USER)
    assert identity.self_signing is None and not identity.device_cross_signed("D")
    # A device whose key was changed after signing.
    good, _ = device(keys, "TAMPERED")
    tampered = copy.deepcopy(good)
    tampered["keys"]["ed25519:TAMPERED"] = _b64(b"\x01" * 32)
    assert not read_identity(query_body(keys, {"TAMPERED": tampered}), USER) \
        .device_cross_signed("TAMPERED")


@pytest.mark.parametrize("body", [
    {}, {"master_keys": None}, {"master_keys": {USER: "nope"}},
    {"master_keys": {USER: {"user_id": USER, "usage": ["master"], "keys": {"a": 1, "b": 2}}}},
    {"device_keys": {USER: {"D": {"device_id": "D", "user_id": USER, "keys": None}}}},
    {"device_keys": {USER: ["not", "a", "map"]}},
    {"self_signing_keys": {USER: {"signatures": {USER: {"ed25519:x": "!!!"}}}}},
])
def test_malformed_answers_mean_not_cross_signed(body: dict[str, Any]) -> None:
    identity = read_identity(body, USER)
    assert identity.master is None or identity.self_signing is None
    assert not identity.signed_devices


def test_sealed_key_file_roundtrip_and_wrong_pickle_key(tmp_path) -> None:
    path = tmp_path / "cross_signing.json"
    keys = SigningKeys.generate()
    save_keys(path, USER, keys, PICKLE)
    assert stored_master(path) == keys.public("master")
    loaded = load_keys(path, USER, PICKLE)
    assert loaded is not None and loaded.seeds == keys.seeds
    with pytest.raises(IdentityError, match="another one"):
        load_keys(path, USER, PICKLE + "x")
    with pytest.raises(IdentityError, match="not @bob"):
        load_keys(path, "@bob:example.org", PICKLE)
    path.write_text("{not json")
    with pytest.raises(IdentityError, match="damaged"):
        load_keys(path, USER, PICKLE)
    assert load_keys(tmp_path / "absent.json", USER, PICKLE) is None


def test_verified_trust_pins_on_first_use_and_refuses_a_changed_identity(tmp_path) -> None:
    keys = SigningKeys.generate()
    dev, ed = device(keys, "D")
    pins = IdentityPins(tmp_path / "identities.json")
    identity = read_identity(query_body(keys, {"D": dev}), USER)
    assert trusted_devices(identity, pins) == {"D": ed}
    assert IdentityPins(tmp_path / "identities.json").get(USER) == keys.public("master")

    replaced = SigningKeys.generate()
    dev2, _ = device(replaced, "E")
    changed = read_identity(query_body(replaced, {"E": dev2}), USER)
    assert trusted_devices(changed, pins) == {}
    assert pins.forget(USER)
    assert set(trusted_devices(changed, pins)) == {"E"}
