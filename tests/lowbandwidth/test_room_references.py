"""Room references (Starling's, docs/transports.md): a `{roomId}` slot of a path enum may
carry `~` + 64 bits of SHA-256(room ID); the server resolves it among the rooms the
session's user has joined, never elsewhere, and answers an unknown one 4.04 so the client
repeats the request with the full ID. Both engines, loopback UDP."""

from __future__ import annotations

from typing import Any

from starling.lowbandwidth.server import LowBandwidthServer
from starling.protocol.lowbandwidth import codec
from starling_client.lowbandwidth import LowBandwidthClient
from tests.lowbandwidth.test_coap import connect, hs_config, lb, register

__all__ = ["hs_config", "lb"]  # fixtures


def test_reference_is_short_and_only_in_room_slots() -> None:
    ref = codec.room_reference("!abcdefghijklmnopqr:example.org")
    assert codec.is_room_reference(ref) and len(ref) == 12 and ref[0] == "~"
    assert ref != codec.room_reference("!abcdefghijklmnopqr:example.com")
    assert codec.room_slots(["9", "!r:x", "m.room.message", "t1"]) == [1]
    assert codec.room_slots(["q", "@u:x", "!r:x", "tag"]) == [2]
    assert codec.room_slots(["7"]) == [] and codec.room_slots(["9", "!r:x"]) == []
    assert codec.room_slots(["_matrix", "client"]) == []


async def user(lb: LowBandwidthServer, name: str, **kwargs: Any) -> LowBandwidthClient:
    client = await connect(lb, **kwargs)
    client.access_token = (await register(client, name))["access_token"]
    return client


async def raw_send(client: LowBandwidthClient, segment: str, txn: str) -> tuple[int, Any]:
    """A send whose room segment is exactly `segment` (no fallback)."""
    return await client._request(
        "PUT",
        f"/_matrix/client/v3/rooms/{segment}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": txn},
        None,
        10.0,
        False,
    )


async def test_send_by_reference_lands_in_the_room(lb: LowBandwidthServer) -> None:
    alice = await user(lb, "refalice")
    try:
        rooms = []
        for _ in range(3):
            status, room = await alice.request("POST", "/_matrix/client/v3/createRoom", {})
            assert status == 200
            rooms.append(room["room_id"])
        target = rooms[1]
        message, _ = alice._message(
            "PUT",
            f"/_matrix/client/v3/rooms/{target}/send/m.room.message/t1",
            {"body": "x"},
            None,
            room_references=True,
        )
        assert list(message.opt.uri_path)[1] == codec.room_reference(target)
        status, sent = await alice.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{target}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "by reference"},
        )
        assert status == 200, sent
        status, event = await alice.request(
            "GET", f"/_matrix/client/v3/rooms/{target}/event/{sent['event_id']}"
        )
        assert status == 200 and event["room_id"] == target
        assert event["content"]["body"] == "by reference"
        # A second send resolves from the session's cache; same room.
        status, again = await raw_send(alice, codec.room_reference(target), "t2")
        assert status == 200
        status, event = await alice.request(
            "GET", f"/_matrix/client/v3/rooms/{target}/event/{again['event_id']}"
        )
        assert status == 200 and event["room_id"] == target
    finally:
        await alice.close()


async def test_reference_never_resolves_outside_the_users_rooms(lb: LowBandwidthServer) -> None:
    alice = await user(lb, "refowner")
    mallory = await user(lb, "refmallory")
    try:
        status, room = await alice.request("POST", "/_matrix/client/v3/createRoom", {})
        assert status == 200
        ref = codec.room_reference(room["room_id"])
        # Mallory is not in the room: the reference names nothing for her.
        status, answer = await raw_send(mallory, ref, "m1")
        assert status == 404 and answer["errcode"] == codec.ROOM_REFERENCE_ERRCODE
        # Junk of the right shape: the same answer, never a 500.
        status, answer = await raw_send(alice, "~AAAAAAAAAAA", "a1")
        assert status == 404 and answer["errcode"] == codec.ROOM_REFERENCE_ERRCODE
        # The SDK falls back to the full ID, which gets the normal Matrix error.
        status, answer = await mallory.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/m2",
            {"msgtype": "m.text", "body": "no"},
        )
        assert status == 403 and answer["errcode"] == "M_FORBIDDEN"
        # Without a token the reference is not resolved: the token's own error.
        anonymous = await connect(lb)
        try:
            status, answer = await raw_send(anonymous, ref, "x1")
            assert status == 401 and answer["errcode"] == "M_MISSING_TOKEN"
        finally:
            await anonymous.close()
    finally:
        await alice.close()
        await mallory.close()


async def test_joined_later_then_left(lb: LowBandwidthServer) -> None:
    alice = await user(lb, "refhost")
    bob = await user(lb, "refguest")
    try:
        status, room = await alice.request(
            "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}
        )
        assert status == 200
        room_id = room["room_id"]
        ref = codec.room_reference(room_id)
        status, _ = await raw_send(bob, ref, "b1")  # not joined yet
        assert status == 404
        status, _ = await bob.request("POST", f"/_matrix/client/v3/join/{room_id}", {})
        assert status == 200
        status, answer = await raw_send(bob, ref, "b2")  # joined since: looked up again
        assert status == 200, answer
        status, _ = await bob.request("POST", f"/_matrix/client/v3/rooms/{room_id}/leave", {})
        assert status == 200
        # Left: the reference still names that room (cached), which refuses the send.
        status, answer = await raw_send(bob, ref, "b3")
        assert status == 403 and answer["errcode"] == "M_FORBIDDEN"
    finally:
        await alice.close()
        await bob.close()


async def test_client_switch_bytes(lb: LowBandwidthServer) -> None:
    """The same send costs len(room ID) + 1 - 12 bytes less by reference (the full ID's
    option needs an extended-length byte, the 12-byte reference does not)."""
    sizes = {}
    for enabled in (True, False):
        client = await user(lb, f"refswitch{int(enabled)}", room_references=enabled)
        try:
            status, room = await client.request("POST", "/_matrix/client/v3/createRoom", {})
            assert status == 200
            before = client.bytes_sent
            status, _ = await client.request(
                "PUT",
                f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/s1",
                {"msgtype": "m.text", "body": "hi"},
            )
            assert status == 200
            sizes[enabled] = (client.bytes_sent - before, len(room["room_id"].encode()))
        finally:
            await client.close()
    (by_ref, full), (by_id, full_again) = sizes[True], sizes[False]
    assert full == full_again
    assert by_id - by_ref == full + 1 - 12
