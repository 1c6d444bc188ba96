"""Spaces spanning two real servers: a space on b whose child is a space on a is walked
by b's /hierarchy through a's federation /hierarchy (rooms b is not in, their children,
private rooms left out), and a's endpoint answers only what the asking server may see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.federation.harness import FederatedServer, User, federation_servers, signed_request
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration


async def make_room(
    server: FederatedServer, user: User, name: str, space: bool, **body: Any
) -> str:
    if space:
        body["creation_content"] = {"type": "m.space"}
    return await server.create_room(user, name=name, **body)


async def add_child(
    server: FederatedServer, user: User, space: str, child: str, via: str, **content: Any
) -> None:
    status, body = await server.client_request(
        "PUT",
        f"/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}",
        user.token,
        {"via": [via], **content},
    )
    assert status == 200, body


@pytest.mark.parametrize("engine", ENGINES)
async def test_hierarchy_across_servers(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice, bob = await a.register("alice"), await b.register("bob")
        a_name = a.server_name
        space = await make_room(a, alice, "Space on a", True, preset="public_chat")
        public = await make_room(a, alice, "Public on a", False, preset="public_chat")
        private = await make_room(a, alice, "Private on a", False, preset="private_chat")
        sub = await make_room(a, alice, "Subspace on a", True, preset="public_chat")
        deep = await make_room(a, alice, "Deep on a", False, preset="public_chat")
        await add_child(a, alice, space, public, a_name, order="b")
        await add_child(a, alice, space, private, a_name, order="c")
        await add_child(a, alice, space, sub, a_name, order="a", suggested=True)
        await add_child(a, alice, sub, deep, a_name)
        top = await make_room(b, bob, "Top on b", True, preset="public_chat")
        await add_child(b, bob, top, space, a_name, suggested=True)

        status, body = await b.client_request(
            "GET", f"/_matrix/client/v1/rooms/{top}/hierarchy", bob.token
        )
        assert status == 200, (body, b.log_tail())
        rooms = {r["room_id"]: r for r in body["rooms"]}
        assert [r["room_id"] for r in body["rooms"]] == [top, space, sub, deep, public]
        assert rooms[space]["name"] == "Space on a" and rooms[space]["room_type"] == "m.space"
        assert rooms[space]["join_rule"] == "public" and rooms[space]["num_joined_members"] == 1
        assert [c["state_key"] for c in rooms[space]["children_state"]] == [sub, public, private]
        assert rooms[public]["children_state"] == [] and rooms[deep]["name"] == "Deep on a"

        # Paginated and limited to suggested rooms, through the same remote answers.
        status, page = await b.client_request(
            "GET",
            f"/_matrix/client/v1/rooms/{top}/hierarchy",
            bob.token,
            params={"limit": "2"},
        )
        assert status == 200 and [r["room_id"] for r in page["rooms"]] == [top, space]
        status, page = await b.client_request(
            "GET",
            f"/_matrix/client/v1/rooms/{top}/hierarchy",
            bob.token,
            params={"limit": "2", "from": page["next_batch"]},
        )
        assert status == 200 and [r["room_id"] for r in page["rooms"]] == [sub, deep], page
        status, body = await b.client_request(
            "GET",
            f"/_matrix/client/v1/rooms/{top}/hierarchy",
            bob.token,
            params={"suggested_only": "true", "max_depth": "2"},
        )
        assert status == 200 and [r["room_id"] for r in body["rooms"]] == [top, space, sub]

        # a's federation endpoint: one level, the private child named inaccessible.
        key = b.signing_key()
        status, answer = await signed_request(
            a, "GET", f"/_matrix/federation/v1/hierarchy/{space}", origin=b.server_name, key=key
        )
        assert status == 200, answer
        assert answer["room"]["room_id"] == space
        assert {c["room_id"] for c in answer["children"]} == {public, sub}
        assert all("children_state" not in c for c in answer["children"])
        assert answer["inaccessible_children"] == [private]
        status, answer = await signed_request(
            a,
            "GET",
            f"/_matrix/federation/v1/hierarchy/{space}?suggested_only=true",
            origin=b.server_name,
            key=key,
        )
        assert status == 200 and [c["room_id"] for c in answer["children"]] == [sub]
        # A private room b has no one in is unknown to b; so is a room a does not have.
        for room in (private, "!nope:" + a_name):
            status, answer = await signed_request(
                a, "GET", f"/_matrix/federation/v1/hierarchy/{room}", origin=b.server_name, key=key
            )
            assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), answer
        status, answer = await a.federation_get(f"/_matrix/federation/v1/hierarchy/{space}")
        assert status == 401
        # Once bob is invited, b may see the private room (its user is invited).
        status, _ = await a.client_request(
            "POST",
            f"/_matrix/client/v3/rooms/{private}/invite",
            alice.token,
            {"user_id": bob.user_id},
        )
        assert status == 200
        status, answer = await signed_request(
            a, "GET", f"/_matrix/federation/v1/hierarchy/{private}", origin=b.server_name, key=key
        )
        assert status == 200 and answer["room"]["join_rule"] == "invite", answer

        # Room summaries (MSC3266) of rooms b is not in, through the same federation
        # endpoint: the public one from `via`; the private one only now bob is invited
        # (b's view of the invite: membership "invite").
        status, summary = await b.client_request(
            "GET",
            f"/_matrix/client/v1/room_summary/{public}",
            bob.token,
            params={"via": a_name},
        )
        assert status == 200, summary
        assert summary["name"] == "Public on a" and summary["membership"] == "leave"
        assert "children_state" not in summary
        status, summary = await b.client_request(
            "GET", f"/_matrix/client/v1/room_summary/{public}", bob.token
        )
        assert status == 404  # no via: b cannot describe a room it is not in
