"""Dehydrated devices (MSC3814, at Synapse's unstable prefix), on both engines: upload with
keys (the device is in the user's device list and /keys/query), get, to-device messages
sent to it paged and deleted as acknowledged (GET with `from`, as matrix-js-sdk reads
them, and the earlier POST), replacement, deletion, and who may do what."""

from __future__ import annotations

from typing import Any

from tests.e2ee.support import Device, new_device
from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
DD = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"


def dehydrated_body(device: Device, data: str = "pickle") -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "device_data": {"algorithm": "m.dehydration.v2", "device_pickle": data},
        "initial_device_display_name": "Dehydrated device",
        "device_keys": device.device_keys(),
        "one_time_keys": device.one_time_keys(3),
        "fallback_keys": device.fallback_key(),
    }


async def ok(hs: Harness, method: str, path: str, token: str, body: Any = None, **kw: Any) -> Any:
    status, resp = await hs.request(method, path, token, body, **kw)
    assert status == 200, (path, resp)
    return resp


async def test_dehydrated_device_lifecycle(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    status, err = await hs.request("GET", DD, alice.token)
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")  # supported, none yet

    first = Device(alice.user_id, "DEHYDRATED1", alice.token)
    assert await ok(hs, "PUT", DD, alice.token, dehydrated_body(first)) == {
        "device_id": "DEHYDRATED1"
    }
    got = await ok(hs, "GET", DD, alice.token)
    assert got == {"device_id": "DEHYDRATED1", "device_data": dehydrated_body(first)["device_data"]}
    # A real device of alice's: bob's client finds its keys and claims a one-time key.
    query = await ok(
        hs, "POST", f"{V3}/keys/query", bob.token, {"device_keys": {alice.user_id: []}}
    )
    assert "DEHYDRATED1" in query["device_keys"][alice.user_id]
    claim = await ok(
        hs,
        "POST",
        f"{V3}/keys/claim",
        bob.token,
        {"one_time_keys": {alice.user_id: {"DEHYDRATED1": "signed_curve25519"}}},
    )
    assert claim["one_time_keys"][alice.user_id]["DEHYDRATED1"]

    # bob sends it to-device messages; alice's new device reads them a page at a time.
    for i in range(3):
        await ok(
            hs,
            "PUT",
            f"{V3}/sendToDevice/m.room.encrypted/t{i}",
            bob.token,
            {"messages": {alice.user_id: {"DEHYDRATED1": {"n": i}}}},
        )
    events = f"{DD}/DEHYDRATED1/events"
    page = await ok(hs, "GET", events, alice.token)
    assert [e["content"]["n"] for e in page["events"]] == [0, 1, 2]
    assert page["events"][0]["sender"] == bob.user_id
    again = await ok(hs, "GET", events, alice.token)  # not acknowledged: the same again
    assert [e["content"]["n"] for e in again["events"]] == [0, 1, 2]
    done = await ok(hs, "GET", events, alice.token, params={"from": page["next_batch"]})
    assert done == {"events": []}  # no next_batch: the client stops
    # The earlier POST form reads the same (now empty) inbox.
    assert await ok(hs, "POST", events, alice.token, {}) == {"events": []}

    # A new dehydrated device replaces the old one (gone from the device list).
    second = Device(alice.user_id, "DEHYDRATED2", alice.token)
    await ok(hs, "PUT", DD, alice.token, dehydrated_body(second, "newer"))
    assert (await ok(hs, "GET", DD, alice.token))["device_id"] == "DEHYDRATED2"
    devices = [
        d["device_id"] for d in (await ok(hs, "GET", f"{V3}/devices", alice.token))["devices"]
    ]
    assert "DEHYDRATED2" in devices and "DEHYDRATED1" not in devices

    # Only the owner's current dehydrated device; live devices are never taken over.
    for path, token in ((events, alice.token), (f"{DD}/DEHYDRATED2/events", bob.token)):
        status, err = await hs.request("GET", path, token)
        assert (status, err["errcode"]) == (403, "M_FORBIDDEN"), err
    live = Device(alice.user_id, "DEV", alice.token)
    status, err = await hs.request("PUT", DD, alice.token, dehydrated_body(live))
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    for bad in (
        {"device_id": "X"},
        {"device_id": 5, "device_data": {}},
        {"device_id": "X", "device_data": []},
    ):
        status, err = await hs.request("PUT", DD, alice.token, bad)
        assert status == 400, (bad, err)
    status, err = await hs.request(
        "GET", f"{DD}/DEHYDRATED2/events", alice.token, params={"from": "x"}
    )
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    # Keys that do not belong to the device are refused and leave no device behind.
    wrong = dehydrated_body(Device(alice.user_id, "DEHYDRATED3", alice.token))
    wrong["device_keys"] = second.device_keys()
    status, err = await hs.request("PUT", DD, alice.token, wrong)
    assert status == 400, err
    devices = [
        d["device_id"] for d in (await ok(hs, "GET", f"{V3}/devices", alice.token))["devices"]
    ]
    assert "DEHYDRATED3" not in devices

    assert await ok(hs, "DELETE", DD, alice.token) == {"device_id": "DEHYDRATED2"}
    status, _ = await hs.request("GET", DD, alice.token)
    assert status == 404
    status, _ = await hs.request("DELETE", DD, alice.token)
    assert status == 404
    status, versions = await hs.request("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc3814"] is True
