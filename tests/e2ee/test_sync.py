"""The E2EE extensions through the real GET /sync."""

from __future__ import annotations

from typing import Any

from tests.e2ee.support import V3, Device, new_device, upload_ok
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
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    room = await hs.create_room(alice.token, preset="public_chat")
    status, _ = await hs.request("POST", f"{V3}/join/{room}", bob.token, {})
    assert status == 200
    await hs.services.e2ee.device_lists.flush()
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
