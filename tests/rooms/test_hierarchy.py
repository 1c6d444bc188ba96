"""GET /v1/rooms/{roomId}/hierarchy: nested spaces, child ordering, suggested_only,
max_depth, pagination, access (403 for a private space, hidden private children) and
parameter checking."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

V1 = "/_matrix/client/v1"
V3 = "/_matrix/client/v3"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES


async def make_space(hs: Harness, token: str, name: str, **extra: Any) -> str:
    return await hs.create_room(token, name=name, creation_content={"type": "m.space"}, **extra)


async def add_child(hs: Harness, token: str, space: str, child: str, **content: Any) -> None:
    body = {"via": [hs.server_name], **content}
    status, resp = await hs.request(
        "PUT", f"{V3}/rooms/{space}/state/m.space.child/{child}", token, body
    )
    assert status == 200, resp


async def hierarchy(hs: Harness, token: str, room_id: str, **params: str) -> tuple[int, Any]:
    return await hs.request("GET", f"{V1}/rooms/{room_id}/hierarchy", token, params=params)


def room_ids(body: dict[str, Any]) -> list[str]:
    return [r["room_id"] for r in body["rooms"]]


async def build_tree(hs: Harness, token: str) -> dict[str, str]:
    """root -> [a (order "b"), sub (order "a", suggested)], sub -> [c (suggested), d]."""
    root = await make_space(hs, token, "Root", preset="public_chat")
    sub = await make_space(hs, token, "Sub", preset="public_chat")
    a = await hs.create_room(token, name="A", preset="public_chat")
    c = await hs.create_room(token, name="C", preset="public_chat")
    d = await hs.create_room(token, name="D", preset="public_chat")
    await add_child(hs, token, root, a, order="b")
    await add_child(hs, token, root, sub, order="a", suggested=True)
    await add_child(hs, token, sub, c, suggested=True)
    await add_child(hs, token, sub, d)
    return {"root": root, "sub": sub, "a": a, "c": c, "d": d}


async def test_nested_spaces_depth_first_in_order(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    t = await build_tree(hs, tok)
    status, body = await hierarchy(hs, tok, t["root"])
    assert status == 200, body
    assert room_ids(body) == [t["root"], t["sub"], t["c"], t["d"], t["a"]]
    assert "next_batch" not in body
    root = body["rooms"][0]
    assert root["name"] == "Root" and root["room_type"] == "m.space"
    assert root["join_rule"] == "public" and root["num_joined_members"] == 1
    assert root["world_readable"] is False and root["guest_can_join"] is False
    children = root["children_state"]
    assert [c["state_key"] for c in children] == [t["sub"], t["a"]]
    assert children[0]["type"] == "m.space.child"
    assert isinstance(children[0]["origin_server_ts"], int)
    assert children[0]["content"]["via"] == [hs.server_name]
    leaf = body["rooms"][2]
    assert leaf["children_state"] == [] and "room_type" not in leaf


async def test_children_without_via_are_ignored_and_orders_validated(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    root = await make_space(hs, tok, "Root", preset="public_chat")
    x = await hs.create_room(tok, preset="public_chat")
    y = await hs.create_room(tok, preset="public_chat")
    z = await hs.create_room(tok, preset="public_chat")
    await add_child(hs, tok, root, x)  # no order: after the ordered ones
    await add_child(hs, tok, root, y, order="\u00e9")  # invalid order: treated as none
    await add_child(hs, tok, root, z, order="zz")
    removed = await hs.create_room(tok, preset="public_chat")
    status, _ = await hs.request("PUT", f"{V3}/rooms/{root}/state/m.space.child/{removed}", tok, {})
    assert status == 200
    status, body = await hierarchy(hs, tok, root)
    assert status == 200, body
    assert room_ids(body) == [root, z, x, y]


async def test_suggested_only(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    t = await build_tree(hs, tok)
    status, body = await hierarchy(hs, tok, t["root"], suggested_only="true")
    assert status == 200, body
    assert room_ids(body) == [t["root"], t["sub"], t["c"]]
    assert [c["state_key"] for c in body["rooms"][0]["children_state"]] == [t["sub"]]


async def test_max_depth(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    t = await build_tree(hs, tok)
    status, body = await hierarchy(hs, tok, t["root"], max_depth="0")
    assert status == 200 and room_ids(body) == [t["root"]], body
    status, body = await hierarchy(hs, tok, t["root"], max_depth="1")
    assert status == 200 and room_ids(body) == [t["root"], t["sub"], t["a"]], body


async def test_pagination(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    t = await build_tree(hs, tok)
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        params = {"limit": "2"}
        if token is not None:
            params["from"] = token
        status, body = await hierarchy(hs, tok, t["root"], **params)
        assert status == 200, body
        assert len(body["rooms"]) <= 2
        seen += room_ids(body)
        token = body.get("next_batch")
        if token is None:
            break
    assert seen == [t["root"], t["sub"], t["c"], t["d"], t["a"]]

    status, body = await hierarchy(hs, tok, t["root"], limit="1")
    token = body["next_batch"]
    status, body = await hierarchy(
        hs, tok, t["root"], limit="1", suggested_only="true", **{"from": token}
    )
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    status, body = await hierarchy(hs, tok, t["root"], limit="1", max_depth="1", **{"from": token})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    # Another user cannot use the token.
    _, other = await hs.register("bob")
    status, body = await hierarchy(hs, other, t["root"], **{"from": token})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    # The same page can be asked for again.
    status, body = await hierarchy(hs, tok, t["root"], limit="1", **{"from": token})
    assert status == 200 and room_ids(body) == [t["sub"]], body


async def test_private_space_is_forbidden_and_private_children_hidden(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    private_space = await make_space(hs, atok, "Secret", preset="private_chat")
    status, body = await hierarchy(hs, btok, private_space)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body

    public_space = await make_space(hs, atok, "Open", preset="public_chat")
    private_room = await hs.create_room(atok, preset="private_chat")
    open_room = await hs.create_room(atok, preset="public_chat")
    await add_child(hs, atok, public_space, private_room)
    await add_child(hs, atok, public_space, open_room)
    await add_child(hs, atok, public_space, "!elsewhere:remote.example")
    status, body = await hierarchy(hs, btok, public_space)
    assert status == 200, body
    assert room_ids(body) == [public_space, open_room]
    # An invited user may see the room.
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{private_room}/invite", atok, {"user_id": bob}
    )
    assert status == 200
    status, body = await hierarchy(hs, btok, public_space)
    assert room_ids(body) == [public_space, private_room, open_room]
    # The member sees everything; an unknown room is 403 too.
    status, body = await hierarchy(hs, atok, private_space)
    assert status == 200 and room_ids(body) == [private_space]
    status, body = await hierarchy(hs, atok, "!unknown:test.local")
    assert status == 403, body


async def test_world_readable_space_is_visible(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    space = await make_space(
        hs,
        atok,
        "Readable",
        preset="private_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    status, body = await hierarchy(hs, btok, space)
    assert status == 200 and body["rooms"][0]["world_readable"] is True, body


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "x"},
        {"max_depth": "-1"},
        {"max_depth": "deep"},
        {"suggested_only": "maybe"},
        {"from": "unknown-token"},
    ],
)
async def test_bad_parameters(hs: Harness, params: dict[str, str]) -> None:
    _, tok = await hs.register("alice")
    space = await make_space(hs, tok, "S", preset="public_chat")
    status, body = await hierarchy(hs, tok, space, **params)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body


async def test_bad_room_id_and_no_token(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    status, body = await hierarchy(hs, tok, "not-a-room")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
    status, body = await hs.request("GET", f"{V1}/rooms/!r:test.local/hierarchy")
    assert status == 401, body
