"""Cross-signing: /keys/device_signing/upload (with UIA to replace keys),
/keys/signatures/upload, and the keys and signatures /keys/query shows to whom."""

from __future__ import annotations

from typing import Any

from starling.protocol.signing import SigningKey
from tests.e2ee.support import V3, CrossSigning, Device, new_device, sign, upload_ok
from tests.support.harness import Harness


async def upload_signing(hs: Harness, device: Device, body: dict[str, Any]) -> tuple[int, Any]:
    return await hs.request("POST", f"{V3}/keys/device_signing/upload", device.token, body)


async def query(hs: Harness, device: Device, *users: str) -> dict[str, Any]:
    status, resp = await hs.request(
        "POST", f"{V3}/keys/query", device.token, {"device_keys": {u: [] for u in users}}
    )
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def test_upload_and_visibility(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    keys = CrossSigning(alice.user_id)
    status, resp = await upload_signing(hs, alice, keys.upload_body())
    assert (status, resp) == (200, {})
    mine = await query(hs, alice, alice.user_id)
    assert mine["master_keys"][alice.user_id] == keys.key_object("master")
    assert mine["self_signing_keys"][alice.user_id] == keys.key_object("self_signing")
    assert mine["user_signing_keys"][alice.user_id] == keys.key_object("user_signing")
    theirs = await query(hs, bob, alice.user_id)
    assert theirs["master_keys"][alice.user_id] == keys.key_object("master")
    assert alice.user_id not in theirs["user_signing_keys"]
    # The same keys again: a no-op, no authentication needed.
    status, _ = await upload_signing(hs, alice, keys.upload_body())
    assert status == 200


async def test_bad_keys_are_refused(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    keys = CrossSigning(alice.user_id)
    body = keys.upload_body()
    unsigned_ssk = {k: v for k, v in body["self_signing_key"].items() if k != "signatures"}
    wrong = sign(unsigned_ssk, alice.user_id, keys.key_id(keys.master), SigningKey.generate())
    cases = [
        ({**body, "self_signing_key": unsigned_ssk}, 400, "M_INVALID_SIGNATURE"),
        ({**body, "self_signing_key": wrong}, 400, "M_INVALID_SIGNATURE"),
        ({"self_signing_key": body["self_signing_key"]}, 400, "M_MISSING_PARAM"),
        ({**body, "master_key": {**body["master_key"], "user_id": "@x:y"}}, 400, "M_INVALID_PARAM"),
        (
            {**body, "master_key": {**body["master_key"], "usage": ["self_signing"]}},
            400,
            "M_INVALID_PARAM",
        ),
        ({**body, "master_key": {**body["master_key"], "keys": {}}}, 400, "M_INVALID_PARAM"),
    ]
    for case, status, errcode in cases:
        got, resp = await upload_signing(hs, alice, case)
        assert (got, resp["errcode"]) == (status, errcode), (case, resp)
    assert (await query(hs, alice, alice.user_id))["master_keys"] == {}
    # A cross-signing public key equal to one of the user's device IDs is refused.
    clash = await new_device(hs, "clash", device_id=keys.master.public_key_base64)
    clash_keys = CrossSigning(clash.user_id)
    clash_keys.master = keys.master
    got, resp = await upload_signing(hs, clash, clash_keys.upload_body())
    assert (got, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_replacing_keys_needs_the_password(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    password_hash = await hs.services.passwords.hash("correct horse")
    await hs.services.account_store.set_password_hash(alice.user_id, password_hash)
    first = CrossSigning(alice.user_id)
    assert (await upload_signing(hs, alice, first.upload_body()))[0] == 200
    second = CrossSigning(alice.user_id)
    status, resp = await upload_signing(hs, alice, second.upload_body())
    assert status == 401
    assert {"stages": ["m.login.password"]} in resp["flows"]
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
        "password": "wrong",
        "session": resp["session"],
    }
    status, resp = await upload_signing(hs, alice, {**second.upload_body(), "auth": auth})
    assert status == 401 and resp["errcode"] == "M_FORBIDDEN"
    auth["password"] = "correct horse"
    status, resp = await upload_signing(hs, alice, {**second.upload_body(), "auth": auth})
    assert status == 200, resp
    found = await query(hs, alice, alice.user_id)
    assert found["master_keys"][alice.user_id] == second.key_object("master")


async def test_signatures_upload(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    carol = await new_device(hs, "carol")
    await upload_ok(hs, alice, device_keys=alice.device_keys())
    alice_keys = CrossSigning(alice.user_id)
    bob_keys = CrossSigning(bob.user_id)
    assert (await upload_signing(hs, alice, alice_keys.upload_body()))[0] == 200
    assert (await upload_signing(hs, bob, bob_keys.upload_body()))[0] == 200

    device = alice.device_keys()
    ssk_id = alice_keys.key_id(alice_keys.self_signing)
    signed_device = sign(device, alice.user_id, ssk_id, alice_keys.self_signing)
    master = alice_keys.key_object("master")
    signed_master = sign(master, alice.user_id, alice.key_id, alice.key)
    bob_master = bob_keys.key_object("master")
    usk_id = alice_keys.key_id(alice_keys.user_signing)
    signed_bob = sign(bob_master, alice.user_id, usk_id, alice_keys.user_signing)
    forged = sign(device, alice.user_id, ssk_id, SigningKey.generate())
    body = {
        alice.user_id: {
            "DEV": signed_device,
            alice_keys.master.public_key_base64: signed_master,
        },
        bob.user_id: {bob_keys.master.public_key_base64: signed_bob},
    }
    told: list[tuple[str, list[str]]] = []
    hs.services.e2ee.device_lists.listeners.append(
        lambda user, devices, deleted, stream_id: told.append((user, list(devices)))
    )
    status, resp = await hs.request("POST", f"{V3}/keys/signatures/upload", alice.token, body)
    assert (status, resp) == (200, {"failures": {}})
    # Everyone may see it (other servers are told, as the federation listener is): the
    # signed device as a device change (an m.device_list_update with its new keys), the
    # signed master key as a cross-signing one; alice's signature of bob's key is hers.
    assert sorted(told) == [(alice.user_id, []), (alice.user_id, ["DEV"])]
    status, resp = await hs.request(
        "POST",
        f"{V3}/keys/signatures/upload",
        alice.token,
        {
            alice.user_id: {"DEV": forged, "NODEVICE": signed_device},
            bob.user_id: {"notthemaster": signed_bob},
        },
    )
    assert status == 200
    assert resp["failures"][alice.user_id]["DEV"]["errcode"] == "M_INVALID_SIGNATURE"
    assert resp["failures"][alice.user_id]["NODEVICE"]["errcode"] == "M_NOT_FOUND"
    assert resp["failures"][bob.user_id]["notthemaster"]["errcode"] == "M_NOT_FOUND"

    seen_by_bob = await query(hs, bob, alice.user_id, bob.user_id)
    dev = seen_by_bob["device_keys"][alice.user_id]["DEV"]
    assert (
        dev["signatures"][alice.user_id][ssk_id]
        == signed_device["signatures"][alice.user_id][ssk_id]
    )
    assert alice.key_id in seen_by_bob["master_keys"][alice.user_id]["signatures"][alice.user_id]
    # Alice's signature of bob's master key is hers alone: carol does not see it.
    seen_by_alice = await query(hs, alice, bob.user_id)
    assert usk_id in seen_by_alice["master_keys"][bob.user_id]["signatures"][alice.user_id]
    seen_by_carol = await query(hs, carol, bob.user_id)
    assert alice.user_id not in seen_by_carol["master_keys"][bob.user_id].get("signatures", {})
    status, resp = await hs.request(
        "POST", f"{V3}/keys/signatures/upload", alice.token, {alice.user_id: "x"}
    )
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")


async def test_signing_uploads_are_also_served_under_unstable(hs: Harness) -> None:
    """Clients from before v1.1 (and SyTest) use /unstable, as Synapse still serves."""
    alice = await new_device(hs, "alice")
    for endpoint in ("device_signing/upload", "signatures/upload"):
        status, resp = await hs.request(
            "POST", f"/_matrix/client/unstable/keys/{endpoint}", alice.token, {}
        )
        assert status != 404 and resp.get("errcode") != "M_UNRECOGNIZED", (endpoint, resp)
