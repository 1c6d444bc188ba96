"""POST /keys/upload, /keys/query, /keys/claim: shapes, errors, claim-once."""

from __future__ import annotations

import asyncio
from typing import Any

from starling.e2ee.keys import E2eKeyService
from starling.protocol.signing import SigningKey
from starling.sync.extension import SyncContext
from tests.e2ee.support import V3, Device, curve25519, new_device, sign, upload, upload_ok
from tests.support.harness import Harness


async def query(hs: Harness, device: Device, users: dict[str, list[str]]) -> dict[str, Any]:
    status, resp = await hs.request(
        "POST", f"{V3}/keys/query", device.token, {"device_keys": users}
    )
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def claim(hs: Harness, device: Device, wanted: dict[str, Any]) -> dict[str, Any]:
    status, resp = await hs.request(
        "POST", f"{V3}/keys/claim", device.token, {"one_time_keys": wanted}
    )
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def sync_counts(hs: Harness, device: Device) -> dict[str, Any]:
    response: dict[str, Any] = {}
    ext = hs.services.e2ee.to_device_extension
    ctx = SyncContext(device.user_id, device.device_id, None, ext.current_position())
    await ext.contribute(ctx, response)
    return response


async def test_upload_and_query(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob", "BOBPHONE")
    await hs.services.account_store.update_device_display_name(alice.user_id, "DEV", "Laptop")
    resp = await upload_ok(
        hs, alice, device_keys=alice.device_keys(), one_time_keys=alice.one_time_keys(5)
    )
    assert resp == {"one_time_key_counts": {"signed_curve25519": 5}}
    found = await query(hs, bob, {alice.user_id: [], bob.user_id: [], "@nobody:test.local": []})
    keys = found["device_keys"][alice.user_id]["DEV"]
    assert keys["keys"] == alice.device_keys()["keys"]
    assert keys["signatures"] == alice.device_keys()["signatures"]
    assert keys["unsigned"] == {"device_display_name": "Laptop"}
    assert found["device_keys"][bob.user_id] == {}
    assert found["device_keys"]["@nobody:test.local"] == {}
    assert found["failures"] == {}
    # Asking for named devices only returns those.
    found = await query(hs, bob, {alice.user_id: ["OTHER"]})
    assert found["device_keys"][alice.user_id] == {}


async def test_query_remote_user_is_a_failure_without_federation(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    found = await query(hs, alice, {"@bob:elsewhere.example": []})
    assert "elsewhere.example" in found["failures"]
    assert "@bob:elsewhere.example" not in found["device_keys"]
    status, resp = await hs.request(
        "POST", f"{V3}/keys/query", alice.token, {"device_keys": {"@a:b": "DEV"}}
    )
    assert status == 400 and resp["errcode"] == "M_BAD_JSON"
    status, resp = await hs.request("POST", f"{V3}/keys/query", alice.token, {})
    assert status == 400 and resp["errcode"] == "M_MISSING_PARAM"


async def test_bad_device_keys_are_refused_and_nothing_stored(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    good = alice.device_keys()

    def variant(**changes: Any) -> dict[str, Any]:
        keys = {k: v for k, v in good.items() if k != "signatures"}
        keys.update(changes)
        return sign(keys, alice.user_id, alice.key_id, alice.key)

    unsigned = {k: v for k, v in good.items() if k != "signatures"}
    cases = [
        (unsigned, "M_BAD_JSON"),  # `signatures` is required (it may be empty)
        (variant(user_id="@bob:test.local"), "M_INVALID_PARAM"),
        (variant(device_id="OTHER"), "M_INVALID_PARAM"),
        (variant(algorithms="m.olm.v1"), "M_BAD_JSON"),
        (variant(keys={**good["keys"], "nocolon": curve25519()}), "M_INVALID_PARAM"),
        (variant(keys={**good["keys"], "curve25519:DEV": 5}), "M_BAD_JSON"),
        (variant(keys={**good["keys"], "curve25519:DEV": "k" * 2000}), "M_BAD_JSON"),
        ({**good, "signatures": {alice.user_id: {alice.key_id: 1}}}, "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        status, resp = await upload(
            hs, alice, {"device_keys": body, "one_time_keys": alice.one_time_keys(2)}
        )
        assert status == 400, (body, resp)
        assert resp["errcode"] == errcode, (body, resp)
    found = await query(hs, alice, {alice.user_id: []})
    assert found["device_keys"][alice.user_id] == {}
    assert await hs.services.e2ee.keys.key_counts(alice.user_id, "DEV") == ({}, [])


async def test_device_keys_may_be_replaced(hs: Harness) -> None:
    """New identity keys for the same device replace the old ones (as Synapse) and count
    as a device-list change; a re-upload of the same keys is not one."""
    alice = await new_device(hs, "alice")
    first = alice.device_keys()
    await upload_ok(hs, alice, device_keys=first)
    position = hs.services.e2ee.device_lists.current_position()
    await upload_ok(hs, alice, device_keys=first)  # an identical retry
    assert hs.services.e2ee.device_lists.current_position() == position
    alice.key = SigningKey.generate()
    second = alice.device_keys()
    await upload_ok(hs, alice, device_keys=second)
    assert hs.services.e2ee.device_lists.current_position() > position
    found = await query(hs, alice, {alice.user_id: []})
    assert found["device_keys"][alice.user_id]["DEV"]["keys"] == second["keys"]


async def test_placeholder_keys_are_stored_as_given(hs: Harness) -> None:
    """Only the shape of device and one-time keys is checked (as Synapse; clients verify
    the keys and signatures they download): SyTest's placeholder keys, empty or bogus
    self-signatures and unsigned string one-time keys of any algorithm are stored and
    served back unchanged."""
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    device_keys = {
        "user_id": alice.user_id,
        "device_id": "DEV",
        "algorithms": ["m.olm.curve25519-aes-sha256"],
        "keys": {"curve25519:DEV": "curve25519+key", "ed25519:DEV": "ed25519+key"},
        "signatures": {alice.user_id: {"ed25519:DEV": "self+signature"}},
    }
    assert await upload_ok(
        hs, alice, device_keys=device_keys, one_time_keys={"my_algorithm:id1": "KIhH"}
    ) == {"one_time_key_counts": {"my_algorithm": 1}}
    found = await query(hs, bob, {alice.user_id: []})
    got = found["device_keys"][alice.user_id]["DEV"]
    assert got == {**device_keys, "unsigned": {}}
    claimed = await claim(hs, bob, {alice.user_id: {"DEV": "my_algorithm"}})
    assert claimed["one_time_keys"] == {alice.user_id: {"DEV": {"my_algorithm:id1": "KIhH"}}}


async def test_one_time_key_errors(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    await upload_ok(hs, alice, device_keys=alice.device_keys())
    otks = alice.one_time_keys(3)
    await upload_ok(hs, alice, one_time_keys=otks)
    # The same upload again (a retry) is fine and stores nothing new.
    assert await upload_ok(hs, alice, one_time_keys=otks) == {
        "one_time_key_counts": {"signed_curve25519": 3}
    }
    # A known key ID with another key: refused, along with the rest of that upload.
    clash = {**alice.one_time_keys(1, start=10), **alice.one_time_keys(1, start=0)}
    status, resp = await upload(hs, alice, {"one_time_keys": clash})
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM"
    bad_cases = [
        ({"signed_curve25519:AAA": {"key": curve25519()}}, "M_BAD_JSON"),  # no signatures
        ({"signed_curve25519:AAA": {"signatures": {}}}, "M_BAD_JSON"),  # no key
        ({"nocolon": {"key": curve25519(), "signatures": {}}}, "M_INVALID_PARAM"),
        ({"signed_curve25519:AAA": 5}, "M_BAD_JSON"),
        ({"signed_curve25519:AAA": "k" * 2000}, "M_BAD_JSON"),
    ]
    for keys, errcode in bad_cases:
        status, resp = await upload(hs, alice, {"one_time_keys": keys})
        assert (status, resp["errcode"]) == (400, errcode), (keys, resp)
    two_fallbacks = {**alice.fallback_key("F1"), **alice.fallback_key("F2")}
    status, resp = await upload(hs, alice, {"fallback_keys": two_fallbacks})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await upload(hs, alice, {"one_time_keys": alice.one_time_keys(201)})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    counts, unused = await hs.services.e2ee.keys.key_counts(alice.user_id, "DEV")
    assert counts == {"signed_curve25519": 3} and unused == []


async def test_claim_oldest_first_then_fallback(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    first = alice.one_time_keys(1, start=0)
    await upload_ok(hs, alice, device_keys=alice.device_keys(), one_time_keys=first)
    second = alice.one_time_keys(1, start=1)
    fallback = alice.fallback_key()
    await upload_ok(hs, alice, one_time_keys=second, fallback_keys=fallback)
    assert (await sync_counts(hs, alice))["device_unused_fallback_key_types"] == [
        "signed_curve25519"
    ]
    want = {alice.user_id: {"DEV": "signed_curve25519"}}
    got = [(await claim(hs, bob, want))["one_time_keys"][alice.user_id]["DEV"] for _ in range(4)]
    assert got[0] == first and got[1] == second
    assert got[2] == got[3] == fallback
    sync = await sync_counts(hs, alice)
    assert sync["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert sync["device_unused_fallback_key_types"] == []
    # Re-uploading the used fallback key keeps it used; a new one is unused.
    await upload_ok(hs, alice, fallback_keys=fallback)
    assert (await sync_counts(hs, alice))["device_unused_fallback_key_types"] == []
    await upload_ok(hs, alice, fallback_keys=alice.fallback_key("FB2"))
    assert (await sync_counts(hs, alice))["device_unused_fallback_key_types"] == [
        "signed_curve25519"
    ]
    # Unknown users, devices and remote users.
    resp = await claim(
        hs,
        bob,
        {
            "@nobody:test.local": {"X": "signed_curve25519"},
            alice.user_id: {"NODEVICE": "signed_curve25519"},
            "@carol:remote.example": {"D": "signed_curve25519"},
        },
    )
    assert resp["one_time_keys"] == {}
    assert "remote.example" in resp["failures"]


async def test_concurrent_claims_hand_each_key_out_once(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    otks = alice.one_time_keys(50)
    fallback = alice.fallback_key()
    await upload_ok(
        hs, alice, device_keys=alice.device_keys(), one_time_keys=otks, fallback_keys=fallback
    )
    want = {alice.user_id: {"DEV": "signed_curve25519"}}
    results = await asyncio.gather(*(claim(hs, bob, want) for _ in range(100)))
    handed = [next(iter(r["one_time_keys"][alice.user_id]["DEV"].items())) for r in results]
    one_time = [(kid, key) for kid, key in handed if kid in otks]
    fallbacks = [(kid, key) for kid, key in handed if kid in fallback]
    assert len(one_time) == 50
    assert len({kid for kid, _ in one_time}) == 50  # no key twice
    assert all(otks[kid] == key for kid, key in one_time)
    assert len(fallbacks) == 50
    counts, unused = await hs.services.e2ee.keys.key_counts(alice.user_id, "DEV")
    assert counts == {} and unused == []


async def test_claim_directly_many_devices_in_one_call(hs: Harness) -> None:
    devices = [await new_device(hs, f"user{i}") for i in range(5)]
    for d in devices:
        await upload_ok(hs, d, device_keys=d.device_keys(), one_time_keys=d.one_time_keys(2))
    keys: E2eKeyService = hs.services.e2ee.keys
    resp = await keys.claim({d.user_id: {"DEV": "signed_curve25519"} for d in devices})
    assert sorted(resp["one_time_keys"]) == sorted(d.user_id for d in devices)
    for d in devices:
        assert (await keys.key_counts(d.user_id, "DEV"))[0] == {"signed_curve25519": 1}


async def test_deleted_device_loses_its_keys(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    await upload_ok(
        hs, alice, device_keys=alice.device_keys(), one_time_keys=alice.one_time_keys(2)
    )
    await hs.services.account_store.delete_devices(alice.user_id, ["DEV"])
    await hs.services.e2ee.keys.devices_changed(alice.user_id, ["DEV"], True)
    bob = await new_device(hs, "bob")
    assert (await query(hs, bob, {alice.user_id: []}))["device_keys"][alice.user_id] == {}
    resp = await claim(hs, bob, {alice.user_id: {"DEV": "signed_curve25519"}})
    assert resp["one_time_keys"] == {}
