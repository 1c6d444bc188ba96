"""POST /user_directory/search: word-prefix matching on user ID and display name, and
who may be found (users sharing a room with the searcher or in public rooms)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

V3 = "/_matrix/client/v3"


async def search(hs: Harness, token: str, term: str, **extra: Any) -> dict[str, Any]:
    status, body = await hs.request(
        "POST", f"{V3}/user_directory/search", token, {"search_term": term, **extra}
    )
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def found(body: dict[str, Any]) -> list[str]:
    return [r["user_id"] for r in body["results"]]


async def set_name(hs: Harness, user_id: str, token: str, name: str) -> None:
    status, body = await hs.request(
        "PUT", f"{V3}/profile/{user_id}/displayname", token, {"displayname": name}
    )
    assert status == 200, body


async def join(hs: Harness, token: str, room_id: str) -> None:
    status, body = await hs.request("POST", f"{V3}/join/{room_id}", token, {})
    assert status == 200, body


async def test_matches_word_prefixes_of_name_and_user_id(hs: Harness) -> None:
    _searcher, stok = await hs.register("searcher")
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    await set_name(hs, alice, atok, "Alice Smith")
    await set_name(hs, bob, btok, "Robert Smithers")
    room = await hs.create_room(stok, preset="private_chat", invite=[alice, bob])
    await join(hs, atok, room)
    await join(hs, btok, room)

    assert found(await search(hs, stok, "ali")) == [alice]
    assert set(found(await search(hs, stok, "SMITH"))) == {alice, bob}
    assert found(await search(hs, stok, "smi ali")) == [alice]
    assert found(await search(hs, stok, "rob")) == [bob]  # display name
    assert found(await search(hs, stok, "bob")) == [bob]  # user ID localpart
    assert found(await search(hs, stok, "mith")) == []  # a prefix of a word, not a substring
    assert found(await search(hs, stok, "zzz")) == []
    assert found(await search(hs, stok, "  ?! ")) == []
    body = await search(hs, stok, "alice")
    assert body["results"][0] == {"user_id": alice, "display_name": "Alice Smith"}
    assert body["limited"] is False


async def test_profile_changes_are_searchable_at_once(hs: Harness) -> None:
    _searcher, stok = await hs.register("searcher")
    alice, atok = await hs.register("alice")
    room = await hs.create_room(stok, preset="public_chat")
    await join(hs, atok, room)
    assert found(await search(hs, stok, "zebra")) == []
    await set_name(hs, alice, atok, "Zebra Crossing")
    assert found(await search(hs, stok, "zebra")) == [alice]
    await set_name(hs, alice, atok, "Plain")
    assert found(await search(hs, stok, "zebra")) == []
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{alice}/avatar_url", atok, {"avatar_url": "mxc://x/y"}
    )
    assert status == 200
    body = await search(hs, stok, "plain")
    assert body["results"] == [
        {"user_id": alice, "display_name": "Plain", "avatar_url": "mxc://x/y"}
    ]


async def test_only_users_sharing_a_room_or_in_public_rooms(hs: Harness) -> None:
    searcher, stok = await hs.register("searcher")
    loner, ltok = await hs.register("lonely")
    # A user in no room, and one alone in a private room, are not found.
    assert found(await search(hs, stok, "lonely")) == []
    private = await hs.create_room(ltok, preset="private_chat")
    assert found(await search(hs, stok, "lonely")) == []

    # Sharing a private room makes them visible; leaving it hides them again.
    await hs.request("POST", f"{V3}/rooms/{private}/invite", ltok, {"user_id": searcher})
    await join(hs, stok, private)
    assert found(await search(hs, stok, "lonely")) == [loner]
    status, _ = await hs.request("POST", f"{V3}/rooms/{private}/leave", stok, {})
    assert status == 200
    assert found(await search(hs, stok, "lonely")) == []

    # A room becoming public (join rule) makes its members visible to everyone.
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{private}/state/m.room.join_rules/", ltok, {"join_rule": "public"}
    )
    assert status == 200
    assert found(await search(hs, stok, "lonely")) == [loner]
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{private}/state/m.room.join_rules/", ltok, {"join_rule": "invite"}
    )
    assert found(await search(hs, stok, "lonely")) == []

    # So does world-readable history.
    status, _ = await hs.request(
        "PUT",
        f"{V3}/rooms/{private}/state/m.room.history_visibility/",
        ltok,
        {"history_visibility": "world_readable"},
    )
    assert status == 200
    assert found(await search(hs, stok, "lonely")) == [loner]


async def test_searcher_finds_themselves_only_through_a_public_room(hs: Harness) -> None:
    me, tok = await hs.register("myself")
    other, otok = await hs.register("other")
    room = await hs.create_room(otok, preset="private_chat", invite=[me])
    await join(hs, tok, room)
    # Sharing a private room shows each to the other, never to themselves.
    assert found(await search(hs, tok, "myself")) == []
    assert found(await search(hs, otok, "myself")) == [me]
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.join_rules/", otok, {"join_rule": "public"}
    )
    assert status == 200
    assert found(await search(hs, tok, "myself")) == [me]
    assert found(await search(hs, tok, "other")) == [other]


async def test_deactivated_users_are_not_found(hs: Harness) -> None:
    _searcher, stok = await hs.register("searcher")
    gone, gtok = await hs.register("gone")
    room = await hs.create_room(stok, preset="public_chat")
    await join(hs, gtok, room)
    assert found(await search(hs, stok, "gone")) == [gone]
    await hs.services.db.execute("UPDATE users SET deactivated = TRUE WHERE user_id = ?", gone)
    assert found(await search(hs, stok, "gone")) == []


async def test_limit_and_limited(hs: Harness) -> None:
    _searcher, stok = await hs.register("searcher")
    room = await hs.create_room(stok, preset="public_chat")
    for i in range(4):
        _, tok = await hs.register(f"twin{i}")
        await join(hs, tok, room)
    body = await search(hs, stok, "twin", limit=2)
    assert len(body["results"]) == 2 and body["limited"] is True
    body = await search(hs, stok, "twin")
    assert len(body["results"]) == 4 and body["limited"] is False
    body = await search(hs, stok, "twin", limit=100)  # capped, not refused
    assert len(body["results"]) == 4


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({}, "M_MISSING_PARAM"),
        ({"search_term": 5}, "M_BAD_JSON"),
        ({"search_term": "a", "limit": "ten"}, "M_BAD_JSON"),
        ({"search_term": "a", "limit": -1}, "M_BAD_JSON"),
        ({"search_term": "a", "limit": True}, "M_BAD_JSON"),
    ],
)
async def test_bad_input(hs: Harness, body: dict[str, Any], errcode: str) -> None:
    _, tok = await hs.register()
    status, resp = await hs.request("POST", f"{V3}/user_directory/search", tok, body)
    assert status == 400 and resp["errcode"] == errcode, resp


async def test_needs_a_token(hs: Harness) -> None:
    status, resp = await hs.request("POST", f"{V3}/user_directory/search", None, {})
    assert status == 401, resp


class TestSearchAllUsers:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {**UNLIMITED_ROOM_RATES, "user_directory": {"search_all_users": True}}

    async def test_finds_users_sharing_no_room(self, hs: Harness) -> None:
        _, stok = await hs.register("searcher")
        loner, _ = await hs.register("lonely")
        assert found(await search(hs, stok, "lonely")) == [loner]

    async def test_never_finds_the_searcher(self, hs: Harness) -> None:
        _, stok = await hs.register("searcher")
        await hs.create_room(stok, preset="public_chat")
        assert found(await search(hs, stok, "searcher")) == []


class TestDisabled:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"user_directory": {"enabled": False}}

    async def test_finds_nobody(self, hs: Harness) -> None:
        _, stok = await hs.register("searcher")
        room = await hs.create_room(stok, preset="public_chat")
        assert room
        assert await search(hs, stok, "searcher") == {"results": [], "limited": False}
