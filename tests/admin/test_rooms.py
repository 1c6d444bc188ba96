"""Admin API, rooms: Synapse's paths and shapes (docs/admin_api/rooms.md), both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
C = "/_matrix/client/v3"
HS = "test.local"
ROOM = "!abc:test.local"

ROOM_ENDPOINTS = [
    ("GET", f"{V1}/rooms"),
    ("GET", f"{V1}/rooms/{ROOM}"),
    ("GET", f"{V1}/rooms/{ROOM}/members"),
    ("GET", f"{V1}/rooms/{ROOM}/state"),
    ("GET", f"{V1}/rooms/{ROOM}/forward_extremities"),
    ("GET", f"{V1}/rooms/{ROOM}/block"),
    ("PUT", f"{V1}/rooms/{ROOM}/block"),
    ("DELETE", f"{V1}/rooms/{ROOM}"),
    ("DELETE", f"{V2}/rooms/{ROOM}"),
    ("GET", f"{V2}/rooms/{ROOM}/delete_status"),
    ("GET", f"{V2}/rooms/delete_status/xyz"),
    ("POST", f"{V1}/rooms/{ROOM}/make_room_admin"),
    ("POST", f"{V1}/join/{ROOM}"),
    ("GET", f"{V1}/rooms/{ROOM}/timestamp_to_event?ts=1"),
]


async def test_room_endpoints_refuse_non_admins(hs: Harness) -> None:
    _, plain = await hs.register("plain")
    for method, path in ROOM_ENDPOINTS:
        status, resp = await hs.request(method, path, plain, {"block": True})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), (method, path)
    status, resp = await hs.request("GET", f"{V1}/rooms/{ROOM}/block", (await hs.register())[1])
    assert status == 403
    assert await hs.services.admin_rooms.is_blocked(ROOM) is False


async def _rooms(hs: Harness, admin: str, **params: str) -> dict[str, Any]:
    status, resp = await hs.request("GET", f"{V1}/rooms", admin, params=params)
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def test_list_rooms(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    _, bob_token = await hs.register("bob")
    lobby = await hs.create_room(
        alice_token,
        name="Lobby",
        preset="public_chat",
        room_alias_name="lobby",
        visibility="public",
    )
    secret = await hs.create_room(
        alice_token,
        name="Secret",
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ],
    )
    space = await hs.create_room(bob_token, name="Attic", creation_content={"type": "m.space"})
    status, _ = await hs.request("POST", f"{C}/join/{lobby}", bob_token, {})
    assert status == 200
    resp = await _rooms(hs, admin)
    assert resp["total_rooms"] == 3 and resp["offset"] == 0 and "next_batch" not in resp
    assert [r["name"] for r in resp["rooms"]] == ["Attic", "Lobby", "Secret"]
    by_id = {r["room_id"]: r for r in resp["rooms"]}
    assert by_id[lobby] | {} == {
        "room_id": lobby,
        "name": "Lobby",
        "canonical_alias": f"#lobby:{HS}",
        "joined_members": 2,
        "joined_local_members": 2,
        "version": by_id[lobby]["version"],
        "creator": alice,
        "encryption": None,
        "federatable": True,
        "public": True,
        "join_rules": "public",
        "guest_access": by_id[lobby]["guest_access"],
        "history_visibility": "shared",
        "state_events": by_id[lobby]["state_events"],
        "room_type": None,
    }
    assert by_id[lobby]["state_events"] >= 6
    assert by_id[secret]["encryption"] == "m.megolm.v1.aes-sha2" and not by_id[secret]["public"]
    assert by_id[space]["room_type"] == "m.space"
    resp = await _rooms(hs, admin, order_by="joined_members")
    assert resp["rooms"][0]["room_id"] == lobby
    resp = await _rooms(hs, admin, order_by="name", dir="b")
    assert [r["name"] for r in resp["rooms"]] == ["Secret", "Lobby", "Attic"]
    resp = await _rooms(hs, admin, limit="2")
    assert resp["next_batch"] == 2 and len(resp["rooms"]) == 2
    resp = await _rooms(hs, admin, **{"from": "2"})
    assert [r["name"] for r in resp["rooms"]] == ["Secret"] and resp["prev_batch"] == 0
    assert [r["room_id"] for r in (await _rooms(hs, admin, search_term="lob"))["rooms"]] == [lobby]
    assert [r["room_id"] for r in (await _rooms(hs, admin, search_term=space))["rooms"]] == [space]
    assert [r["room_id"] for r in (await _rooms(hs, admin, public_rooms="true"))["rooms"]] == [
        lobby
    ]
    assert (await _rooms(hs, admin, public_rooms="false"))["total_rooms"] == 2
    assert (await _rooms(hs, admin, empty_rooms="true"))["total_rooms"] == 0


@pytest.mark.parametrize(
    "params", [{"order_by": "room_id; DROP"}, {"dir": "x"}, {"limit": "-5"}, {"public_rooms": "y"}]
)
async def test_list_rooms_bad_input(hs: Harness, admin: str, params: dict[str, str]) -> None:
    status, resp = await hs.request("GET", f"{V1}/rooms", admin, params=params)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_room_details_members_state(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token, name="Den", topic="Chat")
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}", admin)
    assert status == 200, resp
    assert resp["name"] == "Den" and resp["topic"] == "Chat" and resp["tombstoned"] is False
    assert resp["replacement_room"] is None and resp["joined_members"] == 1
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/members", admin)
    assert resp == {"members": [alice], "total": 1}
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/state", admin)
    types = {e["type"] for e in resp["state"]}
    assert {"m.room.create", "m.room.member", "m.room.name", "m.room.topic"} <= types
    status, resp = await hs.request(
        "GET", f"{V1}/rooms/{room}/state", admin, params={"type": "m.room.name"}
    )
    assert [e["content"] for e in resp["state"]] == [{"name": "Den"}]
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/forward_extremities", admin)
    assert status == 200 and resp["count"] == 1 and resp["results"][0]["depth"] > 0
    for suffix in ("", "/members", "/state", "/forward_extremities"):
        status, resp = await hs.request("GET", f"{V1}/rooms/!nope:{HS}{suffix}", admin)
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND"), suffix
        status, resp = await hs.request("GET", f"{V1}/rooms/not-a-room{suffix}", admin)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), suffix


async def test_block_room(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    _, bob_token = await hs.register("bob")
    room = await hs.create_room(alice_token, preset="public_chat")
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/block", admin)
    assert (status, resp) == (200, {"block": False})
    status, resp = await hs.request("PUT", f"{V1}/rooms/{room}/block", admin, {"block": True})
    assert (status, resp) == (200, {"block": True})
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/block", admin)
    assert resp == {"block": True, "user_id": f"@root:{HS}"}
    status, resp = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    # an unknown room can be blocked too
    status, _ = await hs.request("PUT", f"{V1}/rooms/!future:{HS}/block", admin, {"block": True})
    assert status == 200
    status, resp = await hs.request("PUT", f"{V1}/rooms/{room}/block", admin, {"block": False})
    assert (status, resp) == (200, {"block": False})
    status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert status == 200
    for body, errcode in [({}, "M_MISSING_PARAM"), ({"block": "yes"}, "M_BAD_JSON")]:
        status, resp = await hs.request("PUT", f"{V1}/rooms/{room}/block", admin, body)
        assert (status, resp["errcode"]) == (400, errcode)


async def _wait_for_delete(hs: Harness, admin: str, delete_id: str) -> dict[str, Any]:
    for _ in range(200):
        status, resp = await hs.request("GET", f"{V2}/rooms/delete_status/{delete_id}", admin)
        assert status == 200, resp
        if resp["status"] in ("complete", "failed"):
            result: dict[str, Any] = resp
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("room deletion did not finish")


async def test_delete_room_with_block_and_purge(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(alice_token, preset="public_chat", room_alias_name="doomed")
    status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert status == 200
    await hs.send_message(alice_token, room, "hello")
    status, resp = await hs.request("DELETE", f"{V2}/rooms/{room}", admin, {"block": True})
    assert status == 200, resp
    done = await _wait_for_delete(hs, admin, resp["delete_id"])
    assert done["status"] == "complete", done
    assert done["room_id"] == room
    assert sorted(done["shutdown_room"]["kicked_users"]) == [alice, bob]
    assert done["shutdown_room"]["local_aliases"] == [f"#doomed:{HS}"]
    status, resp = await hs.request("GET", f"{V2}/rooms/{room}/delete_status", admin)
    assert [r["delete_id"] for r in resp["results"]] == [done["delete_id"]]
    db = hs.services.db
    for table in ("events", "rooms", "current_state", "room_memberships", "state_groups"):
        count = await db.fetch_val(f"SELECT COUNT(*) FROM {table} WHERE room_id = ?", room)
        assert count == 0, table
    assert await hs.services.membership_store.get_joined_rooms(alice) == []
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}", admin)
    assert status == 404
    status, resp = await hs.request("GET", f"{C}/directory/room/%23doomed:{HS}", alice_token)
    assert status == 404
    status, resp = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    status, resp = await hs.request("GET", f"{C}/sync", alice_token)
    assert status == 200, resp
    # the other rooms are untouched and the server carries on
    other = await hs.create_room(alice_token)
    await hs.send_message(alice_token, other, "still here")


async def test_timestamp_to_event(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token)  # the admin is not in it: no matter
    first = await hs.send_message(alice_token, room, "one")
    path = f"{V1}/rooms/{room}/timestamp_to_event"
    found = await hs.services.event_store.get_event(first)
    assert found is not None
    ts = found.event.origin_server_ts
    status, resp = await hs.request("GET", path, admin, params={"ts": str(ts), "dir": "f"})
    assert (status, resp) == (200, {"event_id": first, "origin_server_ts": ts})
    status, resp = await hs.request("GET", path, admin, params={"ts": str(ts + 10**9)})
    assert status == 404 and resp["errcode"] == "M_NOT_FOUND"
    status, resp = await hs.request("GET", path, admin, params={"ts": str(ts + 10**9), "dir": "b"})
    assert status == 200 and resp["event_id"] == first
    for params in ({}, {"ts": "x"}, {"ts": "1", "dir": "sideways"}):
        status, resp = await hs.request("GET", path, admin, params=params)
        assert status == 400 and resp["errcode"].startswith("M_"), params
    status, resp = await hs.request("GET", f"{V1}/rooms/!nope:{HS}/timestamp_to_event?ts=1", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_delete_room_moves_members_to_a_new_room(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(alice_token, preset="public_chat", room_alias_name="moved")
    status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert status == 200
    moderator = f"@moderator:{HS}"  # not an account yet: made on the way, as in Synapse
    body = {"new_room_user_id": moderator, "room_name": "Closed", "message": "Room closed."}
    status, resp = await hs.request("DELETE", f"{V1}/rooms/{room}", admin, body)
    assert status == 200, resp
    new_room = resp["new_room_id"]
    assert new_room and sorted(resp["kicked_users"]) == [alice, bob]
    assert resp["local_aliases"] == [f"#moved:{HS}"]
    status, members = await hs.request("GET", f"{V1}/rooms/{new_room}/members", admin)
    assert members["members"] == sorted([alice, bob, moderator])
    status, details = await hs.request("GET", f"{V1}/rooms/{new_room}", admin)
    assert details["name"] == "Closed" and details["creator"] == moderator
    status, resp = await hs.request("GET", f"{C}/directory/room/%23moved:{HS}", bob_token)
    assert resp["room_id"] == new_room  # the alias now leads to the new room
    status, resp = await hs.request(
        "GET", f"{C}/rooms/{new_room}/messages", bob_token, params={"dir": "b", "limit": "20"}
    )
    assert "Room closed." in [e["content"].get("body") for e in resp["chunk"]]
    status, resp = await hs.request(  # members may read, not write (users_default -10)
        "PUT", f"{C}/rooms/{new_room}/send/m.room.message/t1", bob_token, {"body": "x"}
    )
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_delete_room_v1_without_purge(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token)
    status, resp = await hs.request("DELETE", f"{V1}/rooms/{room}", admin, {"purge": False})
    assert status == 200, resp
    assert resp["kicked_users"] == [alice] and resp["new_room_id"] is None
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}", admin)
    assert status == 200 and resp["joined_members"] == 0
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/block", admin)
    assert resp == {"block": False}


async def test_delete_room_bad_input(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token)
    for body, errcode in [
        ({"block": "yes"}, "M_BAD_JSON"),
        ({"purge": 1}, "M_BAD_JSON"),
        ({"new_room_user_id": "alice"}, "M_BAD_JSON"),
        ({"new_room_user_id": "@alice:elsewhere.org"}, "M_INVALID_PARAM"),
        ({"new_room_user_id": f"@alice:{HS}", "room_name": 5}, "M_BAD_JSON"),
        ({"message": "x" * 10_001}, "M_BAD_JSON"),
    ]:
        status, resp = await hs.request("DELETE", f"{V2}/rooms/{room}", admin, body)
        assert (status, resp["errcode"]) == (400, errcode), body
    status, resp = await hs.request("DELETE", f"{V2}/rooms/{room}", admin)
    assert (status, resp["errcode"]) == (400, "M_NOT_JSON")
    status, resp = await hs.request("DELETE", f"{V2}/rooms/!unknown:{HS}", admin, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V2}/rooms/delete_status/nope", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V2}/rooms/{room}/delete_status", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}", admin)
    assert status == 200  # still there


async def test_make_room_admin_and_join(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    carol, carol_token = await hs.register("carol")
    room = await hs.create_room(alice_token, preset="private_chat", room_alias_name="den")
    status, resp = await hs.request(
        "POST", f"{V1}/rooms/%23den:{HS}/make_room_admin", admin, {"user_id": carol}
    )
    assert (status, resp) == (200, {}), resp
    status, resp = await hs.request("POST", f"{C}/join/{room}", carol_token, {})
    assert status == 200, resp  # invited by make_room_admin
    status, resp = await hs.request(
        "GET", f"{C}/rooms/{room}/state/m.room.power_levels/", carol_token
    )
    assert resp["users"][carol] == 100
    # join a user to a public room, and to an invite-only room the admin is in
    dave, _ = await hs.register("dave")
    public = await hs.create_room(alice_token, preset="public_chat")
    status, resp = await hs.request("POST", f"{V1}/join/{public}", admin, {"user_id": dave})
    assert (status, resp) == (200, {"room_id": public})
    assert public in await hs.services.membership_store.get_joined_rooms(dave)
    private = await hs.create_room(admin)
    status, resp = await hs.request("POST", f"{V1}/join/{private}", admin, {"user_id": dave})
    assert (status, resp) == (200, {"room_id": private})
    status, resp = await hs.request("POST", f"{V1}/join/{room}", admin, {"user_id": dave})
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")  # admin not in it
    for body, errcode in [
        ({}, "M_MISSING_PARAM"),
        ({"user_id": "nobody"}, "M_BAD_JSON"),
        ({"user_id": "@x:elsewhere.org"}, "M_INVALID_PARAM"),
    ]:
        status, resp = await hs.request("POST", f"{V1}/join/{public}", admin, body)
        assert (status, resp["errcode"]) == (400, errcode), body
    status, resp = await hs.request("POST", f"{V1}/join/%23nope:{HS}", admin, {"user_id": dave})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("POST", f"{V1}/join/garbage", admin, {"user_id": dave})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_room_messages(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token, preset="private_chat")
    first = await hs.send_message(alice_token, room, "one")
    second = await hs.send_message(alice_token, room, "two")
    status, _ = await hs.request(
        "PUT", f"{C}/rooms/{room}/redact/{first}/r1", alice_token, {"reason": "oops"}
    )
    assert status == 200
    # the admin is not in this private room, and still reads it all
    status, resp = await hs.request(
        "GET", f"{V1}/rooms/{room}/messages", admin, params={"dir": "b", "limit": "3"}
    )
    assert status == 200, resp
    chunk = resp["chunk"]
    assert [e["type"] for e in chunk] == ["m.room.redaction", "m.room.message", "m.room.message"]
    assert chunk[1]["event_id"] == second and chunk[1]["content"]["body"] == "two"
    assert chunk[2]["event_id"] == first and chunk[2]["content"] == {}  # redacted
    assert "end" in resp
    status, resp = await hs.request(
        "GET",
        f"{V1}/rooms/{room}/messages",
        admin,
        params={"dir": "b", "from": resp["end"], "limit": "100"},
    )
    assert resp["chunk"][-1]["type"] == "m.room.create" and "end" not in resp
    # forwards from the start, with a filter
    status, resp = await hs.request(
        "GET",
        f"{V1}/rooms/{room}/messages",
        admin,
        params={"dir": "f", "limit": "50", "filter": '{"types": ["m.room.message"]}'},
    )
    assert [e["event_id"] for e in resp["chunk"]] == [first, second]
    for params, errcode in [
        ({"dir": "x"}, "M_INVALID_PARAM"),
        ({"from": "garbage"}, "M_INVALID_PARAM"),
        ({"limit": "-1"}, "M_INVALID_PARAM"),
        ({"filter": "{"}, "M_NOT_JSON"),
    ]:
        status, resp = await hs.request("GET", f"{V1}/rooms/{room}/messages", admin, params=params)
        assert (status, resp["errcode"]) == (400, errcode), params
    status, resp = await hs.request("GET", f"{V1}/rooms/!nope:{HS}/messages", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V1}/rooms/{room}/messages", alice_token)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
