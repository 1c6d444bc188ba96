"""Receipts and read markers: endpoints, errors, and m.receipt through the extension."""

from __future__ import annotations

from typing import Any

from tests.extras.helpers import V3, contribute, ephemeral, shared_room
from tests.support.harness import Harness


def receipt_path(room_id: str, receipt_type: str, event_id: str) -> str:
    return f"{V3}/rooms/{room_id}/receipt/{receipt_type}/{event_id}"


def receipt_content(response: dict[str, Any], room_id: str) -> dict[str, Any]:
    events = ephemeral(response, room_id, "m.receipt")
    assert len(events) == 1
    content: dict[str, Any] = events[0]["content"]
    return content


async def test_read_receipt_reaches_other_member(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    receipts = hs.services.receipts
    event_id = await hs.send_message(alice_token, room_id, "hello")
    _, _, since = await contribute(hs, receipts, alice, None)

    status, body = await hs.request(
        "POST", receipt_path(room_id, "m.read", event_id), bob_token, {}
    )
    assert (status, body) == (200, {})
    response, added, since = await contribute(hs, receipts, alice, since)
    assert added
    content = receipt_content(response, room_id)
    assert list(content) == [event_id]
    assert isinstance(content[event_id]["m.read"][bob]["ts"], int)
    assert "thread_id" not in content[event_id]["m.read"][bob]

    # Nothing new since.
    response, added, _ = await contribute(hs, receipts, alice, since)
    assert not added and response == {}

    # An initial sync carries the current receipts.
    response, _, _ = await contribute(hs, receipts, alice, None)
    assert bob in receipt_content(response, room_id)[event_id]["m.read"]


async def test_private_receipt_only_for_its_owner(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    event_id = await hs.send_message(alice_token, room_id, "hello")
    status, _ = await hs.request(
        "POST", receipt_path(room_id, "m.read.private", event_id), bob_token, {}
    )
    assert status == 200
    response, added, _ = await contribute(hs, hs.services.receipts, alice, None)
    assert not added and ephemeral(response, room_id, "m.receipt") == []
    response, _, _ = await contribute(hs, hs.services.receipts, bob, None)
    assert bob in receipt_content(response, room_id)[event_id]["m.read.private"]


async def test_receipts_only_move_forward(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    first = await hs.send_message(alice_token, room_id, "one")
    second = await hs.send_message(alice_token, room_id, "two")
    await hs.request("POST", receipt_path(room_id, "m.read", second), bob_token, {})
    status, _ = await hs.request("POST", receipt_path(room_id, "m.read", first), bob_token, {})
    assert status == 200
    store = hs.services.receipts._store
    assert await store.get_receipt(room_id, "m.read", bob) == second
    # A thread's receipt is separate from the unthreaded one.
    status, _ = await hs.request(
        "POST", receipt_path(room_id, "m.read", first), bob_token, {"thread_id": "main"}
    )
    assert status == 200
    assert await store.get_receipt(room_id, "m.read", bob, "main") == first
    response, _, _ = await contribute(hs, hs.services.receipts, alice, None)
    content = receipt_content(response, room_id)
    assert content[first]["m.read"][bob]["thread_id"] == "main"
    assert bob in content[second]["m.read"]


async def test_threaded_receipts(hs: Harness) -> None:
    _, alice_token, _, bob_token, room_id = await shared_room(hs)
    root = await hs.send_message(alice_token, room_id, "root")
    status, body = await hs.request(
        "PUT",
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        alice_token,
        {
            "msgtype": "m.text",
            "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    assert status == 200
    in_thread = body["event_id"]
    ok = await hs.request(
        "POST", receipt_path(room_id, "m.read", in_thread), bob_token, {"thread_id": root}
    )
    assert ok[0] == 200
    ok = await hs.request(
        "POST", receipt_path(room_id, "m.read", root), bob_token, {"thread_id": root}
    )
    assert ok[0] == 200
    # The event is not in that thread / not in the main timeline.
    other = await hs.send_message(alice_token, room_id, "elsewhere")
    status, body = await hs.request(
        "POST", receipt_path(room_id, "m.read", other), bob_token, {"thread_id": root}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await hs.request(
        "POST", receipt_path(room_id, "m.read", in_thread), bob_token, {"thread_id": "main"}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_receipt_errors(hs: Harness) -> None:
    _alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    _carol, carol_token = await hs.register()
    event_id = await hs.send_message(alice_token, room_id, "hello")
    cases = [
        (receipt_path(room_id, "m.read", event_id), carol_token, {}, 403, "M_FORBIDDEN"),
        (receipt_path(room_id, "m.bogus", event_id), bob_token, {}, 400, "M_INVALID_PARAM"),
        (receipt_path(room_id, "m.read", "$" + "A" * 43), bob_token, {}, 404, "M_NOT_FOUND"),
        (receipt_path(room_id, "m.read", "notanid"), bob_token, {}, 400, "M_INVALID_PARAM"),
        (
            receipt_path(room_id, "m.read", event_id),
            bob_token,
            {"thread_id": ""},
            400,
            "M_INVALID_PARAM",
        ),
        (
            receipt_path(room_id, "m.read", event_id),
            bob_token,
            {"thread_id": 5},
            400,
            "M_INVALID_PARAM",
        ),
        (
            receipt_path(room_id, "m.fully_read", event_id),
            bob_token,
            {"thread_id": "main"},
            400,
            "M_INVALID_PARAM",
        ),
        (
            receipt_path("!unknown:test.local", "m.read", event_id),
            bob_token,
            {},
            403,
            "M_FORBIDDEN",
        ),
    ]
    for path, token, body, status, errcode in cases:
        got_status, got = await hs.request("POST", path, token, body)
        assert (got_status, got["errcode"]) == (status, errcode), (path, body, got)
    # An event of another room.
    other_room = await hs.create_room(bob_token)
    other_event = await hs.send_message(bob_token, other_room, "x")
    status, body = await hs.request(
        "POST", receipt_path(room_id, "m.read", other_event), bob_token, {}
    )
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_fully_read_through_receipt_and_read_markers(hs: Harness) -> None:
    alice, alice_token, bob, bob_token, room_id = await shared_room(hs)
    first = await hs.send_message(alice_token, room_id, "one")
    second = await hs.send_message(alice_token, room_id, "two")
    status, _ = await hs.request(
        "POST", receipt_path(room_id, "m.fully_read", first), bob_token, {}
    )
    assert status == 200
    path = f"{V3}/user/{bob}/rooms/{room_id}/account_data/m.fully_read"
    assert await hs.request("GET", path, bob_token) == (200, {"event_id": first})

    status, _ = await hs.request(
        "POST",
        f"{V3}/rooms/{room_id}/read_markers",
        bob_token,
        {"m.fully_read": second, "m.read": second, "m.read.private": first},
    )
    assert status == 200
    assert await hs.request("GET", path, bob_token) == (200, {"event_id": second})
    # The marker does not move back.
    await hs.request(
        "POST", f"{V3}/rooms/{room_id}/read_markers", bob_token, {"m.fully_read": first}
    )
    assert await hs.request("GET", path, bob_token) == (200, {"event_id": second})
    store = hs.services.receipts._store
    assert await store.get_receipt(room_id, "m.read", bob) == second
    assert await store.get_receipt(room_id, "m.read.private", bob) == first
    # m.fully_read is not an m.receipt: alice sees only the public receipt.
    response, _, _ = await contribute(hs, hs.services.receipts, alice, None)
    content = ephemeral(response, room_id, "m.receipt")[0]["content"]
    assert set(content) == {second} and set(content[second]) == {"m.read"}
    # ...and it arrives as room account data.
    response, _, _ = await contribute(hs, hs.services.account_data, bob, None)
    events = response["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": second}} in events


async def test_read_markers_errors(hs: Harness) -> None:
    _alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    _carol, carol_token = await hs.register()
    event_id = await hs.send_message(alice_token, room_id, "hello")
    path = f"{V3}/rooms/{room_id}/read_markers"
    status, body = await hs.request("POST", path, carol_token, {"m.fully_read": event_id})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await hs.request("POST", path, carol_token, {})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await hs.request("POST", path, bob_token, {"m.read": 5})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await hs.request("POST", path, bob_token, {"m.fully_read": "$" + "B" * 42 + "A"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await hs.request("POST", path, bob_token, raw=b"[]")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")
