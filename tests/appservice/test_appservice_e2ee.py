"""What an encrypting bridge needs in its transactions: to-device messages for its users'
devices (MSC2409) and, with ``org.matrix.msc3202: true``, device-list changes of the
people its users share rooms with and its devices' one-time-key counts and fallback key
types (MSC3202). A real HTTP service on loopback; both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from starling.storage import Database
from tests.appservice.support import AS_TOKEN, FakeAppService, appservice_harness
from tests.support.harness import SERVER_NAME, Harness

V3 = "/_matrix/client/v3"
GHOST = f"@bridge_alice:{SERVER_NAME}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAppService]:
    service = FakeAppService()
    service.registration_extra = {"org.matrix.msc3202": True}
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def hs(database: Database, tmp_path: Path, fake: FakeAppService) -> AsyncIterator[Harness]:
    async with appservice_harness(database, tmp_path, fake) as harness:
        yield harness


def field(fake: FakeAppService, name: str) -> list[Any]:
    return [body[name] for _, body in fake.transactions if name in body]


async def test_to_device_device_lists_and_key_counts(hs: Harness, fake: FakeAppService) -> None:
    status, body = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"type": "m.login.application_service", "username": "bridge_alice"},
    )
    assert status == 200, body
    device = body["device_id"]
    as_ghost = {"user_id": GHOST, "device_id": device}
    keys = {f"signed_curve25519:K{i}": {"key": f"k{i}", "signatures": {}} for i in range(3)}
    status, body = await hs.request(
        "POST",
        f"{V3}/keys/upload",
        AS_TOKEN,
        {
            "one_time_keys": keys,
            "fallback_keys": {
                "signed_curve25519:F": {"key": "f", "fallback": True, "signatures": {}}
            },
        },
        params=as_ghost,
    )
    assert status == 200, body
    bob, bob_token = await hs.register("bob", device_id="BOBDEV")
    room_id = await hs.create_room(bob_token, invite=[GHOST])
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params=as_ghost
    )
    assert status == 200

    # The ghost's join is in a transaction with its device's key counts.
    await fake.wait_for(lambda: bool(field(fake, "org.matrix.msc3202.device_one_time_keys_count")))
    counts = field(fake, "org.matrix.msc3202.device_one_time_keys_count")[-1]
    assert counts[GHOST][device] == {"signed_curve25519": 3}
    fallback = field(fake, "org.matrix.msc3202.device_unused_fallback_key_types")[-1]
    assert fallback[GHOST][device] == ["signed_curve25519"]

    # Bob's new device keys: a device-list change of someone the ghost shares a room with.
    status, _ = await hs.request(
        "POST",
        f"{V3}/keys/upload",
        bob_token,
        {"device_keys": {"user_id": bob, "device_id": "BOBDEV", "algorithms": ["m.olm.v1"],
                         "keys": {"ed25519:BOBDEV": "x", "curve25519:BOBDEV": "y"},
                         "signatures": {}}},
    )  # fmt: skip
    assert status == 200

    def changed() -> set[str]:
        return {u for d in field(fake, "org.matrix.msc3202.device_list") for u in d["changed"]}

    await fake.wait_for(lambda: bob in changed())

    # A to-device message to the ghost's device reaches the service, once, and leaves the
    # inbox (nothing for the ghost's device to sync); one to nobody of its reaches nobody.
    status, _ = await hs.request(
        "PUT",
        f"{V3}/sendToDevice/m.room_key_request/t1",
        bob_token,
        {"messages": {GHOST: {device: {"secret": 1}}, bob: {"BOBDEV": {"secret": 2}}}},
    )
    assert status == 200

    def to_device() -> list[dict[str, Any]]:
        return [m for batch in field(fake, "de.sorunome.msc2409.to_device") for m in batch]

    await fake.wait_for(lambda: bool(to_device()))
    assert to_device() == [
        {"type": "m.room_key_request", "sender": bob, "content": {"secret": 1},
         "to_user_id": GHOST, "to_device_id": device}
    ]  # fmt: skip
    status, sync = await hs.request(
        "GET", f"{V3}/sync", AS_TOKEN, params={**as_ghost, "timeout": "0"}
    )
    assert status == 200
    assert sync.get("to_device", {}).get("events", []) == []
    status, sync = await hs.request("GET", f"{V3}/sync", bob_token, params={"timeout": "0"})
    assert [e["content"] for e in sync["to_device"]["events"]] == [{"secret": 2}]

    # Carol joins: newly sharing a room with the ghost, so "changed"; bob leaves the only
    # room he shared with it: "left".
    carol, carol_token = await hs.register("carol")
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/invite", bob_token, {"user_id": carol}
    )
    assert status == 200
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/join", carol_token, {})
    assert status == 200
    await fake.wait_for(lambda: carol in changed())
    status, _ = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", bob_token, {})
    assert status == 200

    def left() -> set[str]:
        return {u for d in field(fake, "org.matrix.msc3202.device_list") for u in d["left"]}

    await fake.wait_for(lambda: bob in left())
    assert carol not in left() and GHOST not in left()
