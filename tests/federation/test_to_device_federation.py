"""To-device messages across servers (`m.direct_to_device`), both engines: the persisted
outbox the sender carries (in order, kept while the destination is down, surviving a
restart of the sender, deleted once delivered) and inbound delivery with `message_id`
deduplication and the origin checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from starling.federation.edu import EduRegistry
from starling.federation.sender import FederationSender
from starling.sync.extension import SyncContext
from tests.e2ee.support import V3
from tests.federation.test_sender import REMOTE, FakeClient, Setup, wait_for
from tests.support.harness import Harness


@pytest.fixture
async def setup(hs: Harness) -> AsyncIterator[Setup]:
    st = Setup(hs, FakeClient())
    yield st
    if st.sender is not None:
        await st.sender.stop()


async def start_sender(st: Setup) -> FederationSender:
    sender = st.make_sender()
    ftd = st.services.e2ee.federated_to_device
    ftd.wake = sender.stored_edus_added
    sender.use_stored_edus(ftd)
    st.sender = sender
    await sender.start()
    return sender


def to_device_edus(client: FakeClient, destination: str = REMOTE) -> list[dict[str, Any]]:
    return [
        edu["content"]
        for d, _, body in client.sent
        if d == destination
        for edu in body["edus"]
        if edu["edu_type"] == "m.direct_to_device"
    ]


async def send(hs: Harness, token: str, txn: str, messages: dict[str, Any]) -> None:
    status, body = await hs.request(
        "PUT", f"{V3}/sendToDevice/m.room.encrypted/{txn}", token, {"messages": messages}
    )
    assert status == 200, body


async def outbox_size(hs: Harness) -> int:
    return int(await hs.services.db.fetch_val("SELECT COUNT(*) FROM federation_to_device_outbox"))


async def outbox_emptied(hs: Harness) -> None:
    """Wait until the outbox is empty (the timeout only detects a hang)."""
    async with asyncio.timeout(15):
        while True:
            if await outbox_size(hs) == 0:
                return
            await asyncio.sleep(0.01)


async def inbox(hs: Harness, user_id: str, device_id: str) -> list[dict[str, Any]]:
    ext = hs.services.e2ee.to_device_extension
    response: dict[str, Any] = {}
    await ext.contribute(SyncContext(user_id, device_id, None, ext.current_position()), response)
    events: list[dict[str, Any]] = response.get("to_device", {}).get("events", [])
    return events


async def test_remote_messages_are_sent_in_order_once_and_then_forgotten(setup: Setup) -> None:
    hs = setup.hs
    alice, token = await hs.register("alice")
    sender = await start_sender(setup)
    bob = f"@bob:{REMOTE}"
    await send(hs, token, "t1", {bob: {"PHONE": {"n": 1}}, "@carol:other.test": {"*": {"n": 1}}})
    await send(hs, token, "t2", {bob: {"*": {"n": 2}}})
    await send(hs, token, "t2", {bob: {"*": {"n": 2}}})  # a client retry: not sent again
    await wait_for(lambda: len(to_device_edus(setup.client)) == 2)
    await wait_for(lambda: len(to_device_edus(setup.client, "other.test")) == 1)
    first, second = to_device_edus(setup.client)
    assert first["sender"] == alice and first["type"] == "m.room.encrypted"
    assert first["messages"] == {bob: {"PHONE": {"n": 1}}}
    assert second["messages"] == {bob: {"*": {"n": 2}}}
    assert first["message_id"] != second["message_id"]
    assert "@carol:other.test" not in first["messages"]
    await wait_for(lambda: not sender.is_backing_off(REMOTE))
    await outbox_emptied(hs)


async def test_kept_while_the_destination_is_down_and_across_a_restart(setup: Setup) -> None:
    hs = setup.hs
    _, token = await hs.register("alice")
    setup.client.down.add(REMOTE)
    sender = await start_sender(setup)
    bob = f"@bob:{REMOTE}"
    for i in range(3):
        await send(hs, token, f"t{i}", {bob: {"D": {"n": i}}})
    await setup.wait_stored_backoff(REMOTE)
    assert await outbox_size(hs) == 3
    assert to_device_edus(setup.client) == []
    # The sending server restarts; the destination is back.
    await sender.stop()
    setup.client.down.clear()
    sender = await start_sender(setup)
    sender.destination_is_up(REMOTE)
    await wait_for(lambda: len(to_device_edus(setup.client)) == 3)
    assert [e["messages"][bob]["D"]["n"] for e in to_device_edus(setup.client)] == [0, 1, 2]
    await outbox_emptied(hs)


async def test_inbound_delivered_once_per_message_id(hs: Harness) -> None:
    bob, _ = await hs.register("bob", device_id="PHONE")
    await hs.services.account_store.upsert_device(bob, "LAPTOP")
    registry = EduRegistry()
    registry.register("m.direct_to_device", hs.services.e2ee.federated_to_device.on_edu)
    edu = {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": f"@alice:{REMOTE}",
            "type": "m.room.encrypted",
            "message_id": "m1",
            "messages": {
                bob: {"PHONE": {"n": 1}, "NOPE": {"n": 0}},
                f"@eve:{REMOTE}": {"*": {"n": 9}},  # not ours: ignored
            },
        },
    }
    await registry.dispatch(REMOTE, edu)
    await registry.dispatch(REMOTE, edu)  # the same EDU again (a retried transaction)
    expected = {"content": {"n": 1}, "sender": f"@alice:{REMOTE}", "type": "m.room.encrypted"}
    assert await inbox(hs, bob, "PHONE") == [expected]
    assert await inbox(hs, bob, "LAPTOP") == []
    # "*" reaches every device; the same message_id from another origin is another message.
    star = {
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": "@zed:other.test",
            "type": "m.x",
            "message_id": "m1",
            "messages": {bob: {"*": {"k": 1}}},
        },
    }
    await registry.dispatch("other.test", star)
    assert [e["content"] for e in await inbox(hs, bob, "LAPTOP")] == [{"k": 1}]


async def test_inbound_refuses_foreign_senders_and_garbage(hs: Harness) -> None:
    bob, _ = await hs.register("bob", device_id="PHONE")
    registry = EduRegistry()
    registry.register("m.direct_to_device", hs.services.e2ee.federated_to_device.on_edu)
    base = {"sender": f"@alice:{REMOTE}", "type": "m.t", "message_id": "x", "messages": {}}
    bad_contents: list[dict[str, Any]] = [
        {**base, "sender": "@mallory:evil.test", "messages": {bob: {"PHONE": {}}}},
        {**base, "message_id": 5, "messages": {bob: {"PHONE": {}}}},
        {**base, "message_id": "y" * 300, "messages": {bob: {"PHONE": {}}}},
        {**base, "message_id": "a", "messages": {bob: "nope"}},
        {**base, "message_id": "b", "messages": {bob: {"PHONE": "nope"}}},
        {**base, "message_id": "c", "messages": {"not a user": {"PHONE": {}}}},
        {**base, "message_id": "d", "type": None, "messages": {bob: {"PHONE": {}}}},
        {**base, "message_id": "e", "messages": [bob]},
    ]
    for content in bad_contents:
        await registry.dispatch(REMOTE, {"edu_type": "m.direct_to_device", "content": content})
    assert await inbox(hs, bob, "PHONE") == []


async def test_metrics_count_failures_and_queued_edus(setup: Setup) -> None:
    from prometheus_client import REGISTRY

    from starling import metrics

    metrics.enable()  # as serving /metrics does (enable_metrics)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("starling_federation_transaction_failures_total", destination="m.test")
    setup.client.down.add("m.test")
    sender = await start_sender(setup)
    sender.send_edu("m.test", "m.typing", {"n": 1})
    await setup.wait_stored_backoff("m.test")
    after = sample("starling_federation_transaction_failures_total", destination="m.test")
    assert after == before + 1
    sender.send_edu("m.test", "m.typing", {"n": 2})
    assert sample("starling_federation_destination_queue", destination="m.test") == 2
