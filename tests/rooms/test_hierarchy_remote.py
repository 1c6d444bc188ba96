"""/hierarchy with children on other servers (a fake remote in place of federation): what
a remote answer says is checked, garbage is ignored rather than passed on or failing the
walk, rooms the user may not see are left out, and the servers in `via` are asked in
order until one answers."""

from __future__ import annotations

from typing import Any

import pytest

from starling.rooms.hierarchy_remote import clean_summary, parse_answer
from tests.rooms.test_hierarchy import add_child, hierarchy, make_space, room_ids
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

REMOTE_ROOM = "!remote:elsewhere.example"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES


def summary(room_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "room_id": room_id,
        "num_joined_members": 3,
        "world_readable": False,
        "guest_can_join": False,
        "join_rule": "public",
        **extra,
    }


class FakeRemote:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    async def fetch(self, server: str, room_id: str, suggested_only: bool) -> Any:
        self.asked.append((server, room_id))
        return self.answers.get(server)


def test_clean_summary_drops_what_is_not_the_spec() -> None:
    assert clean_summary("x", with_children=True) is None
    assert clean_summary({"room_id": "not a room"}, with_children=False) is None
    got = clean_summary(
        {
            "room_id": "!a:b.c",
            "name": "n" * 5000,
            "topic": 5,
            "num_joined_members": -1,
            "world_readable": "yes",
            "join_rule": "public",
            "evil": {"x": 1},
            "allowed_room_ids": ["!ok:b.c", 3, "bad"],
            "children_state": [
                {
                    "type": "m.space.child",
                    "state_key": "!c:b.c",
                    "content": {"via": ["b.c"]},
                    "sender": "@u:b.c",
                    "origin_server_ts": 5,
                },
                {
                    "type": "m.space.child",
                    "state_key": "!d:b.c",
                    "content": {"via": []},
                    "sender": "@u:b.c",
                    "origin_server_ts": 5,
                },
                {"type": "m.room.name", "state_key": "", "content": {}},
                "junk",
            ],
        },
        with_children=True,
    )
    assert got is not None
    assert "name" not in got and "topic" not in got and "evil" not in got
    assert got["num_joined_members"] == 0 and got["world_readable"] is False
    assert got["allowed_room_ids"] == ["!ok:b.c"]
    assert [c["state_key"] for c in got["children_state"]] == ["!c:b.c"]
    # An answer about another room than the one asked is no answer.
    assert parse_answer({"room": summary("!x:y.z"), "children": []}, "!a:b.c") is None


async def test_remote_children_walked_and_filtered(hs: Harness) -> None:
    _, token = await hs.register()
    root = await make_space(hs, token, "Root", preset="public_chat")
    await add_child(hs, token, root, REMOTE_ROOM, via=["down.example", "up.example"], order="a")
    await add_child(hs, token, root, "!private:up.example", via=["up.example"], order="b")
    await add_child(hs, token, root, "!garbage:up.example", via=["junk.example"], order="c")
    remote_space = summary(
        REMOTE_ROOM,
        room_type="m.space",
        name="Remote space",
        children_state=[
            {
                "type": "m.space.child",
                "state_key": "!child:up.example",
                "content": {"via": ["up.example"]},
                "sender": "@x:up.example",
                "origin_server_ts": 1,
            },
            {
                "type": "m.space.child",
                "state_key": "!hidden:up.example",
                "content": {"via": ["up.example"]},
                "sender": "@x:up.example",
                "origin_server_ts": 2,
            },
        ],
    )
    fake = FakeRemote(
        {
            "down.example": None,  # unreachable: the next server in via is asked
            "up.example": {
                "room": remote_space,
                "children": [summary("!child:up.example", name="Child")],
                "inaccessible_children": ["!hidden:up.example"],
            },
            "junk.example": {"room": [1, 2, 3]},
        }
    )
    hs.services.hierarchy._remote = fake.fetch
    status, body = await hierarchy(hs, token, root)
    assert status == 200, body
    assert room_ids(body) == [root, REMOTE_ROOM, "!child:up.example"]
    remote = body["rooms"][1]
    assert remote["name"] == "Remote space" and remote["num_joined_members"] == 3
    # The child came with the space's answer; the private room's answer (the same one,
    # about another room) was no answer; the hidden child was never asked about.
    assert ("up.example", "!child:up.example") not in fake.asked
    assert ("down.example", REMOTE_ROOM) in fake.asked
    assert all(room != "!hidden:up.example" for _, room in fake.asked)

    # An invite-only remote room is shown only to users who may see it.
    fake.answers["up.example"] = {
        "room": summary(REMOTE_ROOM, join_rule="invite"),
        "children": [],
        "inaccessible_children": [],
    }
    other = await make_space(hs, token, "Other", preset="public_chat")
    await add_child(hs, token, other, REMOTE_ROOM, via=["up.example"])
    status, body = await hierarchy(hs, token, other)
    assert status == 200 and room_ids(body) == [other]


async def test_one_servers_answer_speaks_only_for_its_own_children(hs: Harness) -> None:
    """A server cannot hide or rewrite rooms of the walk that are not its room's children."""
    _, token = await hs.register()
    root = await make_space(hs, token, "Root", preset="public_chat")
    await add_child(hs, token, root, "!liar:liar.example", via=["liar.example"], order="a")
    await add_child(hs, token, root, "!honest:good.example", via=["good.example"], order="b")
    fake = FakeRemote(
        {
            "liar.example": {
                "room": summary("!liar:liar.example"),
                "children": [summary("!honest:good.example", name="Forged")],
                "inaccessible_children": ["!honest:good.example"],
            },
            "good.example": {
                "room": summary("!honest:good.example", name="Honest"),
                "children": [],
                "inaccessible_children": [],
            },
        }
    )
    hs.services.hierarchy._remote = fake.fetch
    status, body = await hierarchy(hs, token, root)
    assert status == 200, body
    assert room_ids(body) == [root, "!liar:liar.example", "!honest:good.example"]
    assert body["rooms"][2]["name"] == "Honest"
