"""Test clients' key material: real ed25519 keys, signed device keys, one-time keys and
cross-signing keys, built the way a client builds them."""

from __future__ import annotations

import copy
import os
from typing import Any

from starling.protocol.signing import SigningKey, compute_signature
from starling.protocol.unpadded_base64 import encode_base64
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


def sign(obj: dict[str, Any], user_id: str, key_id: str, key: SigningKey) -> dict[str, Any]:
    signed = copy.deepcopy(obj)
    signature = compute_signature(obj, key)
    signed.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = signature
    return signed


def curve25519() -> str:
    return encode_base64(os.urandom(32))


class Device:
    def __init__(self, user_id: str, device_id: str, token: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.token = token
        self.key = SigningKey.generate()
        self.curve = curve25519()

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.device_id}"

    def device_keys(self) -> dict[str, Any]:
        keys = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"curve25519:{self.device_id}": self.curve,
                f"ed25519:{self.device_id}": self.key.public_key_base64,
            },
        }
        return sign(keys, self.user_id, self.key_id, self.key)

    def one_time_keys(self, count: int, start: int = 0) -> dict[str, Any]:
        return {
            f"signed_curve25519:K{i:05d}": sign(
                {"key": curve25519()}, self.user_id, self.key_id, self.key
            )
            for i in range(start, start + count)
        }

    def fallback_key(self, name: str = "FB1") -> dict[str, Any]:
        return {
            f"signed_curve25519:{name}": sign(
                {"key": curve25519(), "fallback": True}, self.user_id, self.key_id, self.key
            )
        }


class CrossSigning:
    """A user's master, self-signing and user-signing keys."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.master = SigningKey.generate()
        self.self_signing = SigningKey.generate()
        self.user_signing = SigningKey.generate()

    @staticmethod
    def key_id(key: SigningKey) -> str:
        return f"ed25519:{key.public_key_base64}"

    def key_object(self, usage: str) -> dict[str, Any]:
        key = {"master": self.master, "self_signing": self.self_signing}.get(
            usage, self.user_signing
        )
        obj = {
            "user_id": self.user_id,
            "usage": [usage],
            "keys": {self.key_id(key): key.public_key_base64},
        }
        if usage != "master":
            obj = sign(obj, self.user_id, self.key_id(self.master), self.master)
        return obj

    def upload_body(self) -> dict[str, Any]:
        return {
            "master_key": self.key_object("master"),
            "self_signing_key": self.key_object("self_signing"),
            "user_signing_key": self.key_object("user_signing"),
        }


async def new_device(hs: Harness, localpart: str, device_id: str = "DEV") -> Device:
    user_id, token = await hs.register(localpart, device_id=device_id)
    return Device(user_id, device_id, token)


async def upload(hs: Harness, device: Device, body: dict[str, Any]) -> tuple[int, Any]:
    return await hs.request("POST", f"{V3}/keys/upload", device.token, body)


async def upload_ok(hs: Harness, device: Device, **body: Any) -> dict[str, Any]:
    status, resp = await upload(hs, device, body)
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def alice_and_bob_in_a_room(hs: Harness) -> tuple[Device, Device, str]:
    """Two users with a device each, sharing a public room; the device-list changes of
    the join are flushed, so a sync after this sees only what the test does next."""
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    room = await hs.create_room(alice.token, preset="public_chat")
    status, _ = await hs.request("POST", f"{V3}/join/{room}", bob.token, {})
    assert status == 200
    await hs.services.e2ee.device_lists.flush()
    return alice, bob, room
