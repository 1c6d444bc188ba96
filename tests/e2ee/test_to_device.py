"""PUT /sendToDevice and the to_device sync extension: delivery once, in order, bounded,
acknowledged by the next token, idempotent, persisted across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starling.e2ee.to_device import MAX_PER_SYNC
from starling.storage import Database
from starling.sync.extension import SyncContext
from tests.e2ee.support import V3, Device, new_device
from tests.support.harness import Harness, make_harness


async def send(
    hs: Harness, sender: Device, txn: str, messages: dict[str, Any], event_type: str = "m.test"
) -> tuple[int, Any]:
    return await hs.request(
        "PUT", f"{V3}/sendToDevice/{event_type}/{txn}", sender.token, {"messages": messages}
    )


async def sync(hs: Harness, device: Device, since: int | None) -> tuple[list[Any], int]:
    """One /sync's to-device part: (events, the position the next token holds)."""
    ext = hs.services.e2ee.to_device_extension
    upto = ext.current_position()
    response: dict[str, Any] = {}
    await ext.contribute(SyncContext(device.user_id, device.device_id, since, upto), response)
    return response.get("to_device", {}).get("events", []), upto


async def test_send_to_device_and_to_all_devices(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob_phone = await new_device(hs, "bob", "PHONE")
    await hs.services.account_store.upsert_device(bob_phone.user_id, "LAPTOP")
    bob_laptop = Device(bob_phone.user_id, "LAPTOP", "")
    status, _ = await send(hs, alice, "t1", {bob_phone.user_id: {"PHONE": {"n": 1}}})
    assert status == 200
    status, _ = await send(hs, alice, "t2", {bob_phone.user_id: {"*": {"n": 2}}})
    assert status == 200
    events, _ = await sync(hs, bob_phone, None)
    assert events == [
        {"content": {"n": 1}, "sender": alice.user_id, "type": "m.test"},
        {"content": {"n": 2}, "sender": alice.user_id, "type": "m.test"},
    ]
    events, _ = await sync(hs, bob_laptop, None)
    assert [e["content"] for e in events] == [{"n": 2}]
    # Unknown devices and users are ignored.
    status, _ = await send(
        hs, alice, "t3", {bob_phone.user_id: {"NOPE": {}}, "@ghost:test.local": {"*": {}}}
    )
    assert status == 200


async def test_delivered_once_in_order_bounded_and_acknowledged(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    total = MAX_PER_SYNC + 30
    for i in range(total):
        status, _ = await send(hs, alice, f"txn{i}", {bob.user_id: {"DEV": {"i": i}}})
        assert status == 200
    first, token1 = await sync(hs, bob, None)
    assert [e["content"]["i"] for e in first] == list(range(MAX_PER_SYNC))
    # A retry from the same (initial) point gets the same batch: nothing was acknowledged.
    again, _ = await sync(hs, bob, None)
    assert again == first
    second, token2 = await sync(hs, bob, token1)
    assert [e["content"]["i"] for e in second] == list(range(MAX_PER_SYNC, total))
    # Retrying token1 (the response to it was lost) delivers the rest again, not the first.
    retry, _ = await sync(hs, bob, token1)
    assert retry == second
    third, _ = await sync(hs, bob, token2)
    assert third == []
    left = await hs.services.db.fetch_val("SELECT COUNT(*) FROM to_device_inbox")
    assert left == 0


async def test_transaction_ids_are_idempotent(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    for _ in range(3):
        status, _ = await send(hs, alice, "same", {bob.user_id: {"DEV": {"x": 1}}})
        assert status == 200
    events, _ = await sync(hs, bob, None)
    assert len(events) == 1
    # The same txn ID from another device of the sender is another request.
    await hs.services.account_store.upsert_device(alice.user_id, "OTHER")
    await hs.services.account_store.add_access_token("other-token", alice.user_id, "OTHER")
    other = Device(alice.user_id, "OTHER", "other-token")
    await send(hs, other, "same", {bob.user_id: {"DEV": {"x": 2}}})
    events, _ = await sync(hs, bob, None)
    assert [e["content"]["x"] for e in events] == [1, 2]


async def test_bad_requests(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    cases = [
        ({"messages": {bob.user_id: {"DEV": "text"}}}, 400, "M_BAD_JSON"),
        ({"messages": {bob.user_id: ["DEV"]}}, 400, "M_BAD_JSON"),
        ({"messages": {"not-a-user": {"DEV": {}}}}, 400, "M_INVALID_PARAM"),
        ({}, 400, "M_MISSING_PARAM"),
        ({"messages": {bob.user_id: {"DEV": {"big": "x" * 70_000}}}}, 413, "M_TOO_LARGE"),
    ]
    for i, (body, status, errcode) in enumerate(cases):
        got, resp = await hs.request("PUT", f"{V3}/sendToDevice/m.test/b{i}", alice.token, body)
        assert (got, resp["errcode"]) == (status, errcode), body
    events, _ = await sync(hs, bob, None)
    assert events == []


async def test_messages_survive_a_restart(database: Database, tmp_path: Path) -> None:
    async with make_harness(database, tmp_path) as hs:
        alice = await new_device(hs, "alice")
        bob = await new_device(hs, "bob")
        for i in range(3):
            await send(hs, alice, f"r{i}", {bob.user_id: {"DEV": {"i": i}}})
    # A new process on the same database: new services, new streams read back.
    async with make_harness(database, tmp_path) as hs2:
        events, token = await sync(hs2, bob, None)
        assert [e["content"]["i"] for e in events] == [0, 1, 2]
        later, _ = await sync(hs2, bob, token)
        assert later == []
        # The stream continued from where it was: a new message sorts after the old ones.
        await send(hs2, alice, "r9", {bob.user_id: {"DEV": {"i": 9}}})
        events, _ = await sync(hs2, bob, token)
        assert [e["content"]["i"] for e in events] == [9]


async def test_deleted_device_loses_its_inbox(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    await send(hs, alice, "d1", {bob.user_id: {"DEV": {}}})
    await hs.services.e2ee.keys.devices_changed(bob.user_id, ["DEV"], True)
    assert await hs.services.db.fetch_val("SELECT COUNT(*) FROM to_device_inbox") == 0
