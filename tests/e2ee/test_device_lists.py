"""Device-list tracking: changed / left in /sync's device_lists and /keys/changes."""

from __future__ import annotations

from typing import Any

from starling.sync.extension import SyncContext
from tests.e2ee.support import V3, CrossSigning, Device, new_device, upload_ok
from tests.support.harness import Harness


async def position(hs: Harness) -> int:
    """Where the stream is once queued membership changes are recorded."""
    await hs.services.e2ee.device_lists.flush()
    return hs.services.e2ee.device_lists.current_position()


async def device_lists(hs: Harness, device: Device, since: int) -> dict[str, Any]:
    await hs.services.e2ee.device_lists.flush()
    ext = hs.services.e2ee.device_lists_extension
    response: dict[str, Any] = {}
    ctx = SyncContext(device.user_id, device.device_id, since, ext.current_position())
    await ext.contribute(ctx, response)
    found: dict[str, Any] = response.get("device_lists", {})
    # An empty list is left out of the response (both are optional).
    assert all(found.values()), found
    return {"changed": found.get("changed", []), "left": found.get("left", [])}


async def join(hs: Harness, device: Device, room_id: str) -> None:
    status, resp = await hs.request("POST", f"{V3}/join/{room_id}", device.token, {})
    assert status == 200, resp


async def leave(hs: Harness, device: Device, room_id: str) -> None:
    status, resp = await hs.request("POST", f"{V3}/rooms/{room_id}/leave", device.token, {})
    assert status == 200, resp


async def test_key_changes_reach_users_sharing_a_room(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    carol = await new_device(hs, "carol")
    room = await hs.create_room(alice.token, preset="public_chat")
    await join(hs, bob, room)
    since = await position(hs)
    await upload_ok(hs, bob, device_keys=bob.device_keys())
    await upload_ok(hs, carol, device_keys=carol.device_keys())
    seen = await device_lists(hs, alice, since)
    assert seen == {"changed": [bob.user_id], "left": []}
    # Bob sees his own change; carol shares no room with him.
    assert (await device_lists(hs, bob, since))["changed"] == [bob.user_id]
    assert (await device_lists(hs, carol, since))["changed"] == [carol.user_id]
    # Nothing new since now; an initial sync carries no device_lists.
    assert await device_lists(hs, alice, await position(hs)) == {"changed": [], "left": []}
    # Cross-signing keys count as changes too.
    since = await position(hs)
    status, resp = await hs.request(
        "POST",
        f"{V3}/keys/device_signing/upload",
        bob.token,
        CrossSigning(bob.user_id).upload_body(),
    )
    assert status == 200, resp
    assert (await device_lists(hs, alice, since))["changed"] == [bob.user_id]


async def test_joining_and_leaving(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    room = await hs.create_room(alice.token, preset="public_chat")
    other_room = await hs.create_room(alice.token, preset="public_chat")
    since = await position(hs)
    await join(hs, bob, room)
    assert await device_lists(hs, alice, since) == {"changed": [bob.user_id], "left": []}
    # Bob newly shares a room with alice, so he hears about her too.
    assert alice.user_id in (await device_lists(hs, bob, since))["changed"]
    # A profile change is not a new join.
    since = await position(hs)
    status, _ = await hs.request(
        "PUT",
        f"{V3}/rooms/{room}/state/m.room.member/{bob.user_id}",
        bob.token,
        {"membership": "join", "displayname": "Bobby"},
    )
    assert status == 200
    assert await device_lists(hs, alice, since) == {"changed": [], "left": []}
    # Joining a second shared room, then leaving one: still sharing, not left.
    await join(hs, bob, other_room)
    since = await position(hs)
    await leave(hs, bob, other_room)
    assert (await device_lists(hs, alice, since))["left"] == []
    # Leaving the last shared room: left, for both sides.
    since = await position(hs)
    await leave(hs, bob, room)
    assert await device_lists(hs, alice, since) == {"changed": [], "left": [bob.user_id]}
    assert await device_lists(hs, bob, since) == {"changed": [], "left": [alice.user_id]}
    # Once apart, bob's key changes no longer reach alice.
    since = await position(hs)
    await upload_ok(hs, bob, device_keys=bob.device_keys())
    assert (await device_lists(hs, alice, since))["changed"] == []


async def test_keys_changes_endpoint(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    room = await hs.create_room(alice.token, preset="public_chat")
    await join(hs, bob, room)
    start = f"s0~device_lists.{await position(hs)}"
    await upload_ok(hs, bob, device_keys=bob.device_keys())
    end = f"s0~device_lists.{await position(hs)}"
    status, resp = await hs.request(
        "GET", f"{V3}/keys/changes", alice.token, params={"from": start, "to": end}
    )
    assert status == 200, resp
    assert resp == {"changed": [bob.user_id], "left": []}
    status, resp = await hs.request(
        "GET", f"{V3}/keys/changes", alice.token, params={"from": end, "to": end}
    )
    assert resp == {"changed": [], "left": []}
    status, resp = await hs.request("GET", f"{V3}/keys/changes", alice.token)
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")
    status, resp = await hs.request(
        "GET", f"{V3}/keys/changes", alice.token, params={"from": "garbage"}
    )
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_new_and_deleted_devices_are_changes(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    room = await hs.create_room(alice.token, preset="public_chat")
    await join(hs, bob, room)
    since = await position(hs)
    await hs.services.e2ee.keys.devices_changed(bob.user_id, ["DEV"], True)
    assert (await device_lists(hs, alice, since))["changed"] == [bob.user_id]


async def test_invited_users_are_reported_changed(hs: Harness) -> None:
    """As Synapse: a user invited into one of my rooms appears in my device_lists.changed
    (a client encrypting for invited members starts tracking them); joining reports them
    again; the invitee hears of nobody until they join."""
    alice = await new_device(hs, "alice")
    bob = await new_device(hs, "bob")
    carol = await new_device(hs, "carol")
    room = await hs.create_room(alice.token, preset="private_chat")
    since = await position(hs)
    status, resp = await hs.request(
        "POST", f"{V3}/rooms/{room}/invite", alice.token, {"user_id": bob.user_id}
    )
    assert status == 200, resp
    assert await device_lists(hs, alice, since) == {"changed": [bob.user_id], "left": []}
    assert await device_lists(hs, bob, since) == {"changed": [], "left": []}
    assert await device_lists(hs, carol, since) == {"changed": [], "left": []}
    since = await position(hs)
    await join(hs, bob, room)
    assert (await device_lists(hs, alice, since))["changed"] == [bob.user_id]
    assert alice.user_id in (await device_lists(hs, bob, since))["changed"]
    # An application service's view of joins and leaves is not changed by invites.
    transitions = await hs.services.db.fetch_all(
        "SELECT user_id, joined, invited FROM device_list_memberships WHERE room_id = ?"
        " ORDER BY stream_id",
        room,
    )
    assert [(r[0], bool(r[1]), bool(r[2])) for r in transitions] == [
        (alice.user_id, True, False),
        (bob.user_id, False, True),
        (bob.user_id, True, False),
    ]
