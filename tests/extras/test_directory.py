"""Room aliases, directory visibility and /publicRooms."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.extras.helpers import V3, join, shared_room
from tests.support.harness import Harness


def alias_path(alias: str) -> str:
    return f"{V3}/directory/room/{quote(alias, safe='')}"


async def test_alias_lifecycle(hs: Harness) -> None:
    _alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    alias = "#lobby:test.local"
    assert await hs.request("PUT", alias_path(alias), bob_token, {"room_id": room_id}) == (200, {})
    assert await hs.request("GET", alias_path(alias)) == (
        200,
        {"room_id": room_id, "servers": ["test.local"]},
    )
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/aliases", alice_token)
    assert (status, body) == (200, {"aliases": [alias]})
    status, body = await hs.request("PUT", alias_path(alias), alice_token, {"room_id": room_id})
    assert (status, body["errcode"]) == (409, "M_UNKNOWN")
    # The creator may delete it.
    assert await hs.request("DELETE", alias_path(alias), bob_token) == (200, {})
    status, body = await hs.request("GET", alias_path(alias))
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await hs.request("DELETE", alias_path(alias), bob_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_alias_delete_permissions_and_canonical_alias(hs: Harness) -> None:
    _alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    _carol, carol_token = await hs.register()
    await join(hs, carol_token, room_id)
    alias = "#shared:test.local"
    await hs.request("PUT", alias_path(alias), bob_token, {"room_id": room_id})
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/state/m.room.canonical_alias", alice_token, {"alias": alias}
    )
    assert status == 200
    # carol neither created it nor moderates the room.
    status, body = await hs.request("DELETE", alias_path(alias), carol_token)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # alice, the room's creator, may.
    assert (await hs.request("DELETE", alias_path(alias), alice_token))[0] == 200
    state = await hs.services.room_events.current_state_events(
        room_id, [("m.room.canonical_alias", "")]
    )
    assert "alias" not in state[("m.room.canonical_alias", "")].content
    # A server admin may too.
    _admin, admin_token = await hs.register(admin=True)
    await hs.request("PUT", alias_path("#other:test.local"), bob_token, {"room_id": room_id})
    assert (await hs.request("DELETE", alias_path("#other:test.local"), admin_token))[0] == 200


async def test_alias_errors(hs: Harness) -> None:
    _alice, alice_token, _bob, _bob_token, room_id = await shared_room(hs)
    _outsider, outsider_token = await hs.register()
    cases: list[tuple[str, Any, str | None, int, str]] = [
        ("#bad alias:test.local", {"room_id": room_id}, alice_token, 400, "M_INVALID_PARAM"),
        ("#remote:elsewhere.example", {"room_id": room_id}, alice_token, 400, "M_INVALID_PARAM"),
        ("nohash:test.local", {"room_id": room_id}, alice_token, 400, "M_INVALID_PARAM"),
        ("#ok:test.local", {"room_id": "!unknown:test.local"}, alice_token, 404, "M_NOT_FOUND"),
        ("#ok:test.local", {"room_id": "not-a-room"}, alice_token, 400, "M_INVALID_PARAM"),
        ("#ok:test.local", {}, alice_token, 400, "M_MISSING_PARAM"),
        ("#ok:test.local", {"room_id": 7}, alice_token, 400, "M_BAD_JSON"),
        ("#ok:test.local", {"room_id": room_id}, outsider_token, 403, "M_FORBIDDEN"),
        ("#ok:test.local", {"room_id": room_id}, None, 401, "M_MISSING_TOKEN"),
    ]
    for alias, body, token, status, errcode in cases:
        got_status, got = await hs.request("PUT", alias_path(alias), token, body)
        assert (got_status, got["errcode"]) == (status, errcode), (alias, body)
    status, got = await hs.request("GET", alias_path("#nope:test.local"))
    assert (status, got["errcode"]) == (404, "M_NOT_FOUND")
    status, got = await hs.request("GET", alias_path("bad"))
    assert (status, got["errcode"]) == (400, "M_INVALID_PARAM")
    # Local aliases of a room: members only, unless world-readable.
    status, got = await hs.request("GET", f"{V3}/rooms/{room_id}/aliases", outsider_token)
    assert (status, got["errcode"]) == (403, "M_FORBIDDEN")
    await hs.request(
        "PUT",
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility",
        alice_token,
        {"history_visibility": "world_readable"},
    )
    status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/aliases", outsider_token)
    assert status == 200
    status, got = await hs.request("GET", f"{V3}/rooms/!unknown:test.local/aliases", alice_token)
    assert (status, got["errcode"]) == (404, "M_NOT_FOUND")


async def test_directory_visibility(hs: Harness) -> None:
    _alice, alice_token, _bob, bob_token, room_id = await shared_room(hs)
    path = f"{V3}/directory/list/room/{room_id}"
    assert await hs.request("GET", path) == (200, {"visibility": "private"})
    status, body = await hs.request("PUT", path, bob_token, {"visibility": "public"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert await hs.request("PUT", path, alice_token, {"visibility": "public"}) == (200, {})
    assert await hs.request("GET", path) == (200, {"visibility": "public"})
    status, body = await hs.request("PUT", path, alice_token, {"visibility": "hidden"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    unknown = f"{V3}/directory/list/room/!unknown:test.local"
    status, body = await hs.request("GET", unknown)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await hs.request("PUT", unknown, alice_token, {"visibility": "public"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # createRoom with visibility=public publishes.
    created = await hs.create_room(alice_token, visibility="public")
    assert await hs.request("GET", f"{V3}/directory/list/room/{created}") == (
        200,
        {"visibility": "public"},
    )


async def test_public_rooms_entries_and_search(hs: Harness) -> None:
    _alice, alice_token = await hs.register()
    _bob, bob_token = await hs.register()
    cats = await hs.create_room(
        alice_token,
        visibility="public",
        name="Cat pictures",
        topic="Only cats",
        room_alias_name="cats",
    )
    dogs = await hs.create_room(alice_token, visibility="public", name="Dogs")
    await hs.create_room(alice_token, name="Secret cats")  # not published
    await join(hs, bob_token, dogs)

    status, body = await hs.request("GET", f"{V3}/publicRooms")
    assert status == 200
    assert [e["room_id"] for e in body["chunk"]] == [dogs, cats]
    assert body["total_room_count_estimate"] == 2
    entry = body["chunk"][1]
    assert entry == {
        "room_id": cats,
        "num_joined_members": 1,
        "name": "Cat pictures",
        "topic": "Only cats",
        "canonical_alias": "#cats:test.local",
        "join_rule": "public",
        "world_readable": False,
        "guest_can_join": False,
    }
    # Changes show up: a new name, a new member.
    await hs.request(
        "PUT", f"{V3}/rooms/{cats}/state/m.room.name", alice_token, {"name": "Kittens"}
    )
    await hs.request(
        "PUT",
        f"{V3}/rooms/{cats}/state/m.room.avatar",
        alice_token,
        {"url": "mxc://test.local/cat"},
    )
    await join(hs, bob_token, cats)
    _, body = await hs.request("GET", f"{V3}/publicRooms")
    by_id = {e["room_id"]: e for e in body["chunk"]}
    assert by_id[cats]["name"] == "Kittens"
    assert by_id[cats]["avatar_url"] == "mxc://test.local/cat"
    assert by_id[cats]["num_joined_members"] == 2

    async def search(term: str) -> list[str]:
        status, body = await hs.request(
            "POST", f"{V3}/publicRooms", bob_token, {"filter": {"generic_search_term": term}}
        )
        assert status == 200, body
        return [e["room_id"] for e in body["chunk"]]

    assert await search("kitten") == [cats]
    assert await search("ONLY CATS") == [cats]
    assert await search("#cats:") == [cats]
    assert await search("dog") == [dogs]
    assert await search("secret") == []
    # Room types: null selects rooms without a type.
    status, body = await hs.request(
        "POST", f"{V3}/publicRooms", bob_token, {"filter": {"room_types": ["m.space"]}}
    )
    assert body["chunk"] == []
    status, body = await hs.request(
        "POST", f"{V3}/publicRooms", bob_token, {"filter": {"room_types": [None]}}
    )
    assert len(body["chunk"]) == 2
    # Unpublishing removes it.
    await hs.request(
        "PUT", f"{V3}/directory/list/room/{dogs}", alice_token, {"visibility": "private"}
    )
    _, body = await hs.request("GET", f"{V3}/publicRooms")
    assert [e["room_id"] for e in body["chunk"]] == [cats]


async def test_public_rooms_pagination(hs: Harness) -> None:
    _, token = await hs.register()
    rooms = [await hs.create_room(token, visibility="public", name=f"room {i}") for i in range(5)]
    # One bigger room sorts first.
    _, other_token = await hs.register()
    await join(hs, other_token, rooms[3])
    expected = [rooms[3], *sorted(r for r in rooms if r != rooms[3])]

    seen: list[str] = []
    since = None
    pages = 0
    while True:
        params = {"limit": "2"}
        if since:
            params["since"] = since
        status, body = await hs.request("GET", f"{V3}/publicRooms", params=params)
        assert status == 200
        pages += 1
        seen += [e["room_id"] for e in body["chunk"]]
        assert body["total_room_count_estimate"] == 5
        if pages > 1:
            assert "prev_batch" in body
        since = body.get("next_batch")
        if since is None:
            break
    assert seen == expected and pages == 3
    # Back from the last page.
    status, body = await hs.request(
        "GET", f"{V3}/publicRooms", params={"limit": "2", "since": body["prev_batch"]}
    )
    assert [e["room_id"] for e in body["chunk"]] == expected[2:4]
    # POST paginates the same way.
    status, body = await hs.request("POST", f"{V3}/publicRooms", token, {"limit": 3})
    assert [e["room_id"] for e in body["chunk"]] == expected[:3]
    status, body = await hs.request(
        "POST", f"{V3}/publicRooms", token, {"limit": 3, "since": body["next_batch"]}
    )
    assert [e["room_id"] for e in body["chunk"]] == expected[3:]
    assert "next_batch" not in body


async def test_public_rooms_errors(hs: Harness) -> None:
    _, token = await hs.register()
    for params in ({"limit": "x"}, {"limit": "0"}, {"since": "zzz"}, {"since": "nabc_!x"}):
        status, body = await hs.request("GET", f"{V3}/publicRooms", params=params)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), params
    # Another server's directory is asked over federation; this one cannot be reached.
    status, body = await hs.request(
        "GET", f"{V3}/publicRooms", params={"server": "elsewhere.example"}
    )
    assert (status, body["errcode"]) == (502, "M_UNKNOWN"), body
    status, body = await hs.request("GET", f"{V3}/publicRooms", params={"server": "test.local"})
    assert status == 200
    for bad in (
        {"limit": "5"},
        {"filter": []},
        {"filter": {"generic_search_term": 3}},
        {"filter": {"room_types": "m.space"}},
    ):
        status, body = await hs.request("POST", f"{V3}/publicRooms", token, bad)
        assert status == 400, bad
    status, body = await hs.request("POST", f"{V3}/publicRooms", None, {})
    assert status == 401
