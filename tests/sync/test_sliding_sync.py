"""Simplified sliding sync (MSC4186): lists, ordering, ranges, incremental updates,
required_state, invites, subscriptions, long-poll, and bad input (both engines)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, leave, set_state

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"


async def ss(
    hs: Harness,
    token: str,
    body: dict[str, Any],
    pos: str | None = None,
    timeout: int | None = None,
    expect: int = 200,
) -> dict[str, Any]:
    params: dict[str, str] = {}
    if pos is not None:
        params["pos"] = pos
    if timeout is not None:
        params["timeout"] = str(timeout)
    status, resp = await hs.request("POST", SS, token, body, params=params)
    assert status == expect, resp
    result: dict[str, Any] = resp
    return result


def all_rooms(range_end: int = 19, limit: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "lists": {
            "all": {
                "ranges": [[0, range_end]],
                "timeline_limit": limit,
                "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]],
                **extra,
            }
        }
    }


def bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"]["body"] for e in room.get("timeline", []) if "body" in e["content"]]


async def test_versions_advertises_simplified_sliding_sync(hs: Harness) -> None:
    status, body = await hs.request("GET", "/_matrix/client/versions")
    assert status == 200
    assert body["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_list_ordered_by_recency_with_ranges(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    rooms = [await hs.create_room(tok, name=f"room {i}") for i in range(5)]
    # Oldest activity first: rooms[2] then rooms[0] get new messages, so they lead.
    await hs.send_message(tok, rooms[2], "two")
    await hs.send_message(tok, rooms[0], "zero")
    body = await ss(hs, tok, all_rooms(range_end=2))
    assert body["lists"]["all"]["count"] == 5
    ops = body["lists"]["all"]["ops"]
    assert ops[0]["range"] == [0, 2]
    assert ops[0]["room_ids"] == [rooms[0], rooms[2], rooms[4]]
    assert set(body["rooms"]) == {rooms[0], rooms[2], rooms[4]}
    first = body["rooms"][rooms[0]]
    assert first["initial"] is True
    assert first["name"] == "room 0"
    assert first["membership"] == "join"
    assert bodies(first) == ["zero"]
    assert first["limited"] is True
    assert first["joined_count"] == 1
    assert isinstance(first["bump_stamp"], int)
    assert first["bump_stamp"] > body["rooms"][rooms[4]]["bump_stamp"]
    types = {(e["type"], e["state_key"]) for e in first["required_state"]}
    alice = f"@alice:{hs.server_name}"
    assert types == {("m.room.name", ""), ("m.room.member", alice)}
    assert body["pos"]
    # Widening the range sends only the rooms not sent yet.
    body2 = await ss(hs, tok, all_rooms(range_end=9), pos=body["pos"])
    assert set(body2["rooms"]) == {rooms[1], rooms[3]}
    assert body2["lists"]["all"]["ops"][0]["room_ids"][:2] == [rooms[0], rooms[2]]


async def test_incremental_sends_only_changes(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_a = await hs.create_room(tok, name="A", preset="public_chat")
    room_b = await hs.create_room(tok, name="B")
    body = await ss(hs, tok, all_rooms(limit=5))
    assert set(body["rooms"]) == {room_a, room_b}
    await hs.send_message(tok, room_a, "new one")
    body2 = await ss(hs, tok, all_rooms(limit=5), pos=body["pos"])
    assert set(body2["rooms"]) == {room_a}
    room = body2["rooms"][room_a]
    assert "initial" not in room
    assert bodies(room) == ["new one"]
    assert room["num_live"] == 1
    assert room["limited"] is False
    assert "required_state" not in room and "name" not in room
    # A name change arrives as the changed state and the new name.
    await set_state(hs, tok, room_a, "m.room.name", {"name": "A2"})
    body3 = await ss(hs, tok, all_rooms(limit=5), pos=body2["pos"])
    room = body3["rooms"][room_a]
    assert room["name"] == "A2"
    assert [e["content"]["name"] for e in room["required_state"]] == ["A2"]
    # Bob joins: counts change; no message, no timeline body.
    await join(hs, btok, room_a)
    body4 = await ss(hs, tok, all_rooms(limit=5), pos=body3["pos"])
    assert body4["rooms"][room_a]["joined_count"] == 2
    # Nothing new: with no timeout, an empty answer at once.
    body5 = await ss(hs, tok, all_rooms(limit=5), pos=body4["pos"])
    assert body5["rooms"] == {}


async def test_new_room_enters_range_and_old_one_leaves_it(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    old = await hs.create_room(tok, name="old")
    mid = await hs.create_room(tok, name="mid")
    body = await ss(hs, tok, all_rooms(range_end=1))
    assert body["lists"]["all"]["ops"][0]["room_ids"] == [mid, old]
    new = await hs.create_room(tok, name="new")
    body2 = await ss(hs, tok, all_rooms(range_end=1), pos=body["pos"])
    assert body2["lists"]["all"]["count"] == 3
    assert body2["lists"]["all"]["ops"][0]["room_ids"] == [new, mid]
    assert set(body2["rooms"]) == {new}
    assert body2["rooms"][new]["initial"] is True
    # The old room bumps back into the range: its new event comes as a delta.
    await hs.send_message(tok, old, "back")
    body3 = await ss(hs, tok, all_rooms(range_end=1), pos=body2["pos"])
    assert body3["lists"]["all"]["ops"][0]["room_ids"] == [old, new]
    assert bodies(body3["rooms"][old]) == ["back"]
    assert "initial" not in body3["rooms"][old]


async def test_required_state_wildcards_lazy_members_and_stubs(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    carol, ctok = await hs.register("carol")
    room = await hs.create_room(tok, name="R", topic="T", preset="public_chat")
    await join(hs, btok, room)
    await join(hs, ctok, room)
    await hs.send_message(btok, room, "from bob")
    sub = {
        "room_subscriptions": {
            room: {
                "timeline_limit": 1,
                "required_state": [["*", "*"], ["m.room.member", "$LAZY"]],
            }
        }
    }
    body = await ss(hs, tok, sub)
    state = {(e["type"], e["state_key"]) for e in body["rooms"][room]["required_state"]}
    assert ("m.room.topic", "") in state and ("m.room.create", "") in state
    members = {k for t, k in state if t == "m.room.member"}
    assert members == {bob}  # only the timeline's sender
    # Carol speaks: her member event comes lazily, Bob's is not sent again.
    await hs.send_message(ctok, room, "from carol")
    await hs.send_message(btok, room, "bob again")
    sub["room_subscriptions"][room]["timeline_limit"] = 1
    body2 = await ss(hs, tok, sub, pos=body["pos"])
    r2 = body2["rooms"][room]
    assert bodies(r2) == ["bob again"]
    assert "initial" not in r2
    # MSC object form: include all but the create event; exclude works.
    body3 = await ss(
        hs,
        tok,
        {
            "room_subscriptions": {
                room: {
                    "timeline_limit": 0,
                    "required_state": {
                        "include": [{}],
                        "exclude": [{"type": "m.room.create"}],
                        "lazy_members": True,
                    },
                }
            }
        },
    )
    state3 = {(e["type"], e["state_key"]) for e in body3["rooms"][room]["required_state"]}
    assert ("m.room.create", "") not in state3 and ("m.room.topic", "") in state3
    assert not {k for t, k in state3 if t == "m.room.member"}
    # A removed state entry (topic content emptied is still state; remove a member by
    # leaving is a change): Carol leaves; explicit member rule sends her new event.
    sub_members = {
        "room_subscriptions": {
            room: {"timeline_limit": 0, "required_state": [["m.room.member", carol]]}
        }
    }
    body4 = await ss(hs, tok, sub_members)
    await leave(hs, ctok, room)
    body5 = await ss(hs, tok, sub_members, pos=body4["pos"])
    events = body5["rooms"][room]["required_state"]
    assert [e["content"]["membership"] for e in events] == ["leave"]
    assert alice


async def test_invites_filters_and_stripped_state(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    joined = await hs.create_room(btok, name="mine")
    space = await hs.create_room(btok, name="space", creation_content={"type": "m.space"})
    invited = await hs.create_room(atok, name="Party", preset="private_chat")
    await invite(hs, atok, invited, bob)
    body = await ss(
        hs,
        btok,
        {
            "lists": {
                "invites": {
                    "ranges": [[0, 9]],
                    "timeline_limit": 1,
                    "required_state": [],
                    "filters": {"is_invite": True},
                },
                "rooms": {
                    "ranges": [[0, 9]],
                    "timeline_limit": 1,
                    "required_state": [],
                    "filters": {"is_invite": False, "not_room_types": ["m.space"]},
                },
                "spaces": {
                    "ranges": [[0, 9]],
                    "timeline_limit": 0,
                    "required_state": [],
                    "filters": {"room_types": ["m.space"]},
                },
            }
        },
    )
    assert body["lists"]["invites"]["count"] == 1
    assert body["lists"]["rooms"]["count"] == 1
    assert body["lists"]["spaces"]["count"] == 1
    inv = body["rooms"][invited]
    assert inv["membership"] == "invite"
    assert inv["lists"] == ["invites"]
    state_types = {e["type"] for e in inv["invite_state"]}
    assert "m.room.name" in state_types and "m.room.member" in state_types
    assert "timeline" not in inv
    assert body["rooms"][joined]["lists"] == ["rooms"]
    assert body["rooms"][space]["lists"] == ["spaces"]
    # Accepting the invite: the room comes whole, as joined.
    await join(hs, btok, invited)
    body2 = await ss(hs, btok, all_rooms(), pos=None)
    assert body2["rooms"][invited]["membership"] == "join"
    assert alice


async def test_encrypted_and_dm_filters(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    bob, _ = await hs.register("bob")
    plain = await hs.create_room(tok, name="plain")
    secret = await hs.create_room(
        tok,
        name="secret",
        initial_state=[
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ],
    )
    status, _ = await hs.request(
        "PUT", f"{V3}/user/@alice:{hs.server_name}/account_data/m.direct", tok, {bob: [plain]}
    )
    assert status == 200

    def lst(filters: dict[str, Any]) -> dict[str, Any]:
        return {"ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": filters}

    body = await ss(
        hs,
        tok,
        {
            "lists": {
                "enc": lst({"is_encrypted": True}),
                "dm": lst({"is_dm": True}),
                "notdm": lst({"is_dm": False}),
            }
        },
    )
    assert body["lists"]["enc"]["ops"][0]["room_ids"] == [secret]
    assert body["lists"]["dm"]["ops"][0]["room_ids"] == [plain]
    assert body["lists"]["notdm"]["ops"][0]["room_ids"] == [secret]
    assert body["rooms"][plain]["is_dm"] is True


async def test_subscription_to_foreign_room_is_ignored(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    private = await hs.create_room(atok, name="private")
    await hs.send_message(atok, private, "secret")
    body = await ss(
        hs,
        btok,
        {"room_subscriptions": {private: {"timeline_limit": 10, "required_state": [["*", "*"]]}}},
    )
    assert body["rooms"] == {}


async def test_long_poll_wakes_on_new_message(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room = await hs.create_room(tok, preset="public_chat")
    await join(hs, btok, room)
    body = await ss(hs, tok, all_rooms())
    settle = await ss(hs, tok, all_rooms(), pos=body["pos"])

    async def later() -> None:
        await asyncio.sleep(0.2)
        await hs.send_message(btok, room, "wake")

    task = asyncio.create_task(later())
    body2 = await asyncio.wait_for(
        ss(hs, tok, all_rooms(), pos=settle["pos"], timeout=20000), timeout=15
    )
    await task
    assert bodies(body2["rooms"][room]) == ["wake"]


async def test_long_poll_times_out_empty(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    await hs.create_room(tok)
    body = await ss(hs, tok, all_rooms())
    settle = await ss(hs, tok, all_rooms(), pos=body["pos"])
    empty = await asyncio.wait_for(
        ss(hs, tok, all_rooms(), pos=settle["pos"], timeout=300), timeout=10
    )
    assert empty["rooms"] == {}
    assert empty["pos"]


async def test_pos_of_another_user_or_connection_is_unknown(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    body = await ss(hs, atok, all_rooms())
    bad = await ss(hs, btok, all_rooms(), pos=body["pos"], expect=400)
    assert bad["errcode"] == "M_UNKNOWN_POS"
    other_conn = await ss(
        hs, atok, {**all_rooms(), "conn_id": "other"}, pos=body["pos"], expect=400
    )
    assert other_conn["errcode"] == "M_UNKNOWN_POS"
    garbage = await ss(hs, atok, all_rooms(), pos="garbage", expect=400)
    assert garbage["errcode"] == "M_UNKNOWN_POS"
    # The same pos twice (a retry) is fine.
    await ss(hs, atok, all_rooms(), pos=body["pos"])
    await ss(hs, atok, all_rooms(), pos=body["pos"])


async def test_bad_input_is_a_matrix_error(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    cases: list[tuple[Any, str]] = [
        ({"lists": []}, "M_BAD_JSON"),
        ({"lists": {"a": {"ranges": [[0, 5]], "required_state": []}}}, "M_BAD_JSON"),
        (
            {"lists": {"a": {"ranges": [[5, 1]], "timeline_limit": 1, "required_state": []}}},
            "M_INVALID_PARAM",
        ),
        (
            {"lists": {"a": {"ranges": [[-1, 1]], "timeline_limit": 1, "required_state": []}}},
            "M_INVALID_PARAM",
        ),
        (
            {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 100000, "required_state": []}}},
            "M_INVALID_PARAM",
        ),
        (
            {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": [["x"]]}}},
            "M_BAD_JSON",
        ),
        (
            {
                "lists": {
                    "a": {
                        "ranges": [[0, 1]],
                        "timeline_limit": 1,
                        "required_state": [],
                        "filters": {"is_dm": "yes"},
                    }
                }
            },
            "M_BAD_JSON",
        ),
        ({"room_subscriptions": {"not-a-room": {"timeline_limit": 1}}}, "M_INVALID_PARAM"),
        ({"extensions": {"to_device": {"enabled": True, "since": "abc"}}}, "M_INVALID_PARAM"),
        ({"extensions": {"to_device": {"enabled": True, "since": "\u00b2"}}}, "M_INVALID_PARAM"),
        ({"extensions": {"to_device": {"enabled": True, "since": "9" * 19}}}, "M_INVALID_PARAM"),
        ({"pos": 5}, "M_BAD_JSON"),
        ({"timeout": "soon"}, "M_BAD_JSON"),
        ({"set_presence": "busy"}, "M_INVALID_PARAM"),
        (
            {
                "lists": {
                    "a": {"range": [0, 1], "timeline_limit": 1, "required_state": {"include": 5}}
                }
            },
            "M_BAD_JSON",
        ),
        ({"conn_id": 5}, "M_BAD_JSON"),
        (
            {
                "lists": {
                    str(i): {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": []}
                    for i in range(101)
                }
            },
            "M_INVALID_PARAM",
        ),
    ]
    for body, errcode in cases:
        resp = await ss(hs, tok, body, expect=400)
        assert resp["errcode"] == errcode, (body, resp)
    status, resp = await hs.request("POST", SS, tok, raw=b"[1, 2]")
    assert status == 400 and resp["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")
    status, resp = await hs.request("POST", SS, tok, {}, params={"timeout": "soon"})
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM"
    status, resp = await hs.request("POST", SS, None, {})
    assert status == 401


async def test_raised_timeline_limit_expands_and_widened_state_is_sent(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok, name="R", topic="T")
    for i in range(5):
        await hs.send_message(tok, room, f"m{i}")
    small = all_rooms(limit=1)
    body = await ss(hs, tok, small)
    assert bodies(body["rooms"][room]) == ["m4"]
    # Same config, nothing new: the room is not sent.
    again = await ss(hs, tok, small, pos=body["pos"])
    assert room not in again["rooms"]
    # A larger limit re-sends the newest events at once, flagged as expanded.
    big = all_rooms(limit=3)
    body2 = await ss(hs, tok, big, pos=again["pos"])
    r2 = body2["rooms"][room]
    assert bodies(r2) == ["m2", "m3", "m4"]
    assert r2["expanded_timeline"] is True and r2["unstable_expanded_timeline"] is True
    assert "initial" not in r2
    # Widening required_state sends just the newly matched state.
    wider = all_rooms(limit=3)
    wider["lists"]["all"]["required_state"].append(["m.room.topic", ""])
    body3 = await ss(hs, tok, wider, pos=body2["pos"])
    r3 = body3["rooms"][room]
    assert [(e["type"], e["content"].get("topic")) for e in r3["required_state"]] == [
        ("m.room.topic", "T")
    ]
    assert "timeline" not in r3


async def test_kicked_and_left_rooms(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    kicked = await hs.create_room(atok, name="kick", preset="public_chat")
    left = await hs.create_room(atok, name="left", preset="public_chat")
    never_sent = await hs.create_room(atok, name="gone", preset="public_chat")
    for room in (kicked, left, never_sent):
        await join(hs, btok, room)
    await leave(hs, btok, never_sent)
    body = await ss(hs, btok, all_rooms(limit=2))
    # A room left before this connection started is not in the list.
    assert body["lists"]["all"]["count"] == 2
    assert set(body["rooms"]) == {kicked, left}
    status, resp = await hs.request(
        "POST", f"{V3}/rooms/{kicked}/kick", atok, {"user_id": bob, "reason": "bye"}
    )
    assert status == 200, resp
    await leave(hs, btok, left)
    await hs.send_message(atok, kicked, "after the kick")
    body2 = await ss(hs, btok, all_rooms(limit=2), pos=body["pos"])
    assert body2["rooms"][kicked]["membership"] == "leave"
    assert body2["rooms"][left]["membership"] == "leave"
    # The kick is the last event Bob sees; later messages are not his to read.
    assert "after the kick" not in bodies(body2["rooms"][kicked])
    # A fresh connection still lists the kick (not the room he left himself).
    fresh = await ss(hs, btok, all_rooms(limit=2))
    assert fresh["lists"]["all"]["ops"][0]["room_ids"] == [kicked]


async def test_ignored_users_invites_are_hidden(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room = await hs.create_room(atok, name="spam")
    status, _ = await hs.request(
        "PUT",
        f"{V3}/user/{bob}/account_data/m.ignored_user_list",
        btok,
        {"ignored_users": {alice: {}}},
    )
    assert status == 200
    await invite(hs, atok, room, bob)
    body = await ss(hs, btok, all_rooms())
    assert body["lists"]["all"]["count"] == 0
    assert body["rooms"] == {}


async def test_space_and_tag_filters(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    space = await hs.create_room(tok, name="space", creation_content={"type": "m.space"})
    child = await hs.create_room(tok, name="child")
    other = await hs.create_room(tok, name="other")
    await set_state(hs, tok, space, "m.space.child", {"via": [hs.server_name]}, key=child)
    status, _ = await hs.request(
        "PUT", f"{V3}/user/{alice}/rooms/{other}/tags/m.favourite", tok, {"order": 0.5}
    )
    assert status == 200

    def lst(filters: dict[str, Any]) -> dict[str, Any]:
        return {"ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": filters}

    body = await ss(
        hs,
        tok,
        {
            "lists": {
                "in_space": lst({"spaces": [space]}),
                "fav": lst({"tags": ["m.favourite"]}),
                "not_fav": lst({"not_tags": ["m.favourite"], "not_room_types": ["m.space"]}),
            }
        },
    )
    assert body["lists"]["in_space"]["ops"][0]["room_ids"] == [child]
    assert body["lists"]["fav"]["ops"][0]["room_ids"] == [other]
    assert body["lists"]["not_fav"]["ops"][0]["room_ids"] == [child]


async def test_response_event_budget_limits_timelines(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("starling.sync.sliding.service.MAX_TIMELINE_EVENTS", 4)
    _, tok = await hs.register("alice")
    rooms = [await hs.create_room(tok) for _ in range(3)]
    for room in rooms:
        for i in range(3):
            await hs.send_message(tok, room, f"m{i}")
    body = await ss(hs, tok, all_rooms(limit=10))
    for room in rooms:
        assert bodies(body["rooms"][room]) == ["m2"]
        assert body["rooms"][room]["limited"] is True


async def test_too_many_ranges_is_refused(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    body = all_rooms()
    body["lists"]["all"]["ranges"] = [[0, i] for i in range(11)]
    resp = await ss(hs, tok, body, expect=400)
    assert resp["errcode"] == "M_INVALID_PARAM"


async def test_heroes_for_unnamed_room_and_knocks(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{bob}/displayname", btok, {"displayname": "Bobby"}
    )
    assert status == 200
    unnamed = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, unnamed)
    body = await ss(hs, atok, all_rooms())
    heroes = body["rooms"][unnamed]["heroes"]
    assert heroes == [{"user_id": bob, "displayname": "Bobby"}]
    assert "name" not in body["rooms"][unnamed]
    knockable = await hs.create_room(
        atok,
        name="Knock here",
        room_version="12",
        initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ],
    )
    status, resp = await hs.request("POST", f"{V3}/knock/{knockable}", btok, {})
    assert status == 200, resp
    bob_view = await ss(hs, btok, all_rooms())
    room = bob_view["rooms"][knockable]
    assert room["membership"] == "knock"
    assert "m.room.join_rules" in {e["type"] for e in room["invite_state"]}
    assert alice


async def test_logout_drops_the_devices_connections(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    body = await ss(hs, tok, all_rooms())
    assert await hs.services.sliding_sync.connections.count() == 1
    status, _ = await hs.request("POST", f"{V3}/logout", tok, {})
    assert status == 200
    assert await hs.services.sliding_sync.connections.count() == 0
    assert body["pos"]


async def test_state_deltas_from_each_rooms_own_position(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_a = await hs.create_room(tok, name="A0")
    room_b = await hs.create_room(tok, name="B0")
    config = {"timeline_limit": 0, "required_state": [["m.room.name", ""], ["m.room.topic", ""]]}
    first = await ss(hs, tok, {"room_subscriptions": {room_a: config}})
    assert set(first["rooms"]) == {room_a}
    await set_state(hs, tok, room_b, "m.room.name", {"name": "B1"})
    second = await ss(hs, tok, {"room_subscriptions": {room_b: config}}, pos=first["pos"])
    assert second["rooms"][room_b]["name"] == "B1"
    await set_state(hs, tok, room_a, "m.room.topic", {"topic": "TA"})
    await set_state(hs, tok, room_b, "m.room.topic", {"topic": "TB"})
    both = {"room_subscriptions": {room_a: config, room_b: config}}
    third = await ss(hs, tok, both, pos=second["pos"])
    a_state = [(e["type"], e["content"]) for e in third["rooms"][room_a]["required_state"]]
    b_state = [(e["type"], e["content"]) for e in third["rooms"][room_b]["required_state"]]
    assert a_state == [("m.room.topic", {"topic": "TA"})]
    # B's rename came before the connection last had B: not sent again.
    assert b_state == [("m.room.topic", {"topic": "TB"})]
    assert "name" not in third["rooms"][room_b]
