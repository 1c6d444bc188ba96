"""The E2EE extensions through the real GET /sync."""

from __future__ import annotations

from typing import Any

from tests.e2ee.support import V3, Device, alice_and_bob_in_a_room, new_device, upload_ok
from tests.support.harness import Harness


async def sync(hs: Harness, device: Device, since: str | None = None) -> dict[str, Any]:
    params = {"timeout": "0"}
    if since is not None:
        params["since"] = since
    status, resp = await hs.request("GET", f"{V3}/sync", device.token, params=params)
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def test_sync_carries_to_device_counts_and_device_lists(hs: Harness) -> None:
    alice, bob, _ = await alice_and_bob_in_a_room(hs)
    first = await sync(hs, bob)
    assert first["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert first["device_unused_fallback_key_types"] == []
    assert "device_lists" not in first  # only on incremental syncs
    alice_first = await sync(hs, alice)

    await upload_ok(
        hs,
        bob,
        device_keys=bob.device_keys(),
        one_time_keys=bob.one_time_keys(4),
        fallback_keys=bob.fallback_key(),
    )
    status, _ = await hs.request(
        "PUT",
        f"{V3}/sendToDevice/m.room_key_request/t1",
        alice.token,
        {"messages": {bob.user_id: {"DEV": {"hello": "bob"}}}},
    )
    assert status == 200
    second = await sync(hs, bob, first["next_batch"])
    assert second["to_device"]["events"] == [
        {"content": {"hello": "bob"}, "sender": alice.user_id, "type": "m.room_key_request"}
    ]
    assert second["device_one_time_keys_count"] == {"signed_curve25519": 4}
    assert second["device_unused_fallback_key_types"] == ["signed_curve25519"]
    third = await sync(hs, bob, second["next_batch"])
    assert "to_device" not in third
    # Delivered once: the message is gone after the acknowledging sync.
    assert await hs.services.db.fetch_val("SELECT COUNT(*) FROM to_device_inbox") == 0

    alice_next = await sync(hs, alice, alice_first["next_batch"])
    assert bob.user_id in alice_next["device_lists"]["changed"]


async def test_key_counts_follow_claims_between_syncs(hs: Harness) -> None:
    """The counts every sync carries are remembered per device (E2eKeyStore): a claim
    of a one-time key, then of the fallback key, shows in the very next sync."""
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    await upload_ok(
        hs,
        bob,
        device_keys=bob.device_keys(),
        one_time_keys=bob.one_time_keys(2),
        fallback_keys=bob.fallback_key(),
    )
    first = await sync(hs, bob)
    assert first["device_one_time_keys_count"] == {"signed_curve25519": 2}
    # Asked again from memory: the same answer, and a caller's change does not stick.
    again = await sync(hs, bob)
    assert again["device_one_time_keys_count"] == {"signed_curve25519": 2}
    again["device_one_time_keys_count"]["signed_curve25519"] = 99
    again["device_unused_fallback_key_types"].append("x")
    counts = []
    for _ in range(3):
        status, body = await hs.request(
            "POST",
            f"{V3}/keys/claim",
            alice.token,
            {"one_time_keys": {bob.user_id: {"DEV": "signed_curve25519"}}},
        )
        assert status == 200, body
        assert body["one_time_keys"][bob.user_id]["DEV"]
        after = await sync(hs, bob)
        counts.append(
            (after["device_one_time_keys_count"], after["device_unused_fallback_key_types"])
        )
    assert counts == [
        ({"signed_curve25519": 1}, ["signed_curve25519"]),
        ({"signed_curve25519": 0}, ["signed_curve25519"]),
        ({"signed_curve25519": 0}, []),  # the third claim took the fallback key
    ]
    # A new upload shows at once too.
    await upload_ok(hs, bob, one_time_keys=bob.one_time_keys(3, start=10))
    assert (await sync(hs, bob))["device_one_time_keys_count"] == {"signed_curve25519": 3}


async def test_device_lists_leave_out_an_empty_list(hs: Harness) -> None:
    """`changed` and `left` are both optional (DeviceLists): an empty one is not sent, so
    a sync that brings only a leave says nothing of `changed`, and a client waiting for
    some user's change can tell that none came with it."""
    alice, bob, room = await alice_and_bob_in_a_room(hs)
    before = await sync(hs, alice)
    await upload_ok(hs, bob, device_keys=bob.device_keys())
    changed = await sync(hs, alice, before["next_batch"])
    assert changed["device_lists"] == {"changed": [bob.user_id]}
    status, _ = await hs.request("POST", f"{V3}/rooms/{room}/leave", bob.token, {})
    assert status == 200
    await hs.services.e2ee.device_lists.flush()
    left = await sync(hs, alice, changed["next_batch"])
    assert left["device_lists"] == {"left": [bob.user_id]}
    quiet = await sync(hs, alice, left["next_batch"])
    assert "device_lists" not in quiet
