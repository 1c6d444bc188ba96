"""History visibility on every read path: /sync, /messages, /event, /context, /state."""

from __future__ import annotations

import pytest

from tests.support.harness import Harness
from tests.sync.helpers import V3, invite, join, leave, set_state, sync, timeline_bodies


async def _messages(hs: Harness, tok: str, room_id: str) -> tuple[int, list[str]]:
    status, page = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", tok, params={"dir": "b", "limit": "100"}
    )
    if status != 200:
        return status, []
    bodies = [e["content"]["body"] for e in page["chunk"] if e["type"] == "m.room.message"]
    return status, list(reversed(bodies))


async def _room_with_history(hs: Harness, visibility: str) -> tuple[str, str, str, str, str]:
    """Alice's public room with `visibility`, one message before Bob is invited, one while
    he is invited, one after he joins."""
    _, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": visibility}
    )
    await hs.send_message(atok, room_id, "before invite")
    await invite(hs, atok, room_id, bob)
    await hs.send_message(atok, room_id, "while invited")
    await join(hs, btok, room_id)
    await hs.send_message(atok, room_id, "after join")
    return room_id, atok, bob, btok, visibility


@pytest.mark.parametrize(
    "visibility,expected",
    [
        ("world_readable", ["before invite", "while invited", "after join"]),
        ("shared", ["before invite", "while invited", "after join"]),
        ("invited", ["while invited", "after join"]),
        ("joined", ["after join"]),
    ],
)
async def test_visibility_matrix(hs: Harness, visibility: str, expected: list[str]) -> None:
    room_id, atok, _bob, btok, _ = await _room_with_history(hs, visibility)
    status, seen = await _messages(hs, btok, room_id)
    assert status == 200 and seen == expected
    body = await sync(hs, btok, filter={"room": {"timeline": {"limit": 50}}})
    assert timeline_bodies(body["rooms"]["join"][room_id]) == expected
    # /event and /context agree.
    _, page = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", atok, params={"dir": "b", "limit": "100"}
    )
    by_body = {e["content"].get("body"): e["event_id"] for e in page["chunk"]}
    first = by_body["before invite"]
    status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{first}", btok)
    # /event answers 404 for an event the user may not see (the spec's only error).
    assert status == (200 if "before invite" in expected else 404)
    status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/context/{first}", btok)
    assert status == (200 if "before invite" in expected else 403)


async def test_left_user_sees_history_up_to_leaving(hs: Harness) -> None:
    room_id, atok, bob, btok, _ = await _room_with_history(hs, "shared")
    await hs.send_message(atok, room_id, "last one bob sees")
    await leave(hs, btok, room_id)
    await hs.send_message(atok, room_id, "after bob left")
    status, seen = await _messages(hs, btok, room_id)
    assert status == 200
    assert seen[-1] == "last one bob sees" and "after bob left" not in seen
    # Shared history before he joined is no longer his once he is gone.
    assert "before invite" not in seen and "after join" in seen
    # Forwards from the beginning stops at the departure too.
    status, page = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/messages", btok, params={"dir": "f", "limit": "100"}
    )
    bodies = [e["content"].get("body") for e in page["chunk"]]
    assert "after bob left" not in bodies
    # State is the state when he left.
    await set_state(hs, atok, room_id, "m.room.topic", {"topic": "new topic"})
    status, state = await hs.request("GET", f"{V3}/rooms/{room_id}/state", btok)
    assert status == 200
    assert "m.room.topic" not in {e["type"] for e in state}
    status, member = await hs.request(
        "GET", f"{V3}/rooms/{room_id}/state/m.room.member/{bob}", btok
    )
    assert status == 200 and member["membership"] == "leave"
    status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/joined_members", btok)
    assert status == 403


async def test_outsider_forbidden_unless_world_readable(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, etok = await hs.register("eve")
    room_id = await hs.create_room(atok, preset="public_chat")
    event_id = await hs.send_message(atok, room_id, "hello")
    for path in (
        f"{V3}/rooms/{room_id}/messages?dir=b",
        f"{V3}/rooms/{room_id}/state",
        f"{V3}/rooms/{room_id}/members",
        f"{V3}/rooms/{room_id}/joined_members",
        f"{V3}/rooms/{room_id}/context/{event_id}",
        f"{V3}/rooms/{room_id}/state/m.room.create/",
    ):
        status, body = await hs.request("GET", path, etok)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", (path, body)
    # /event: "not found or you do not have permission" is one 404 (spec), never a 403
    # that would tell an outsider the event exists.
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", etok)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    readable = await hs.send_message(atok, room_id, "for everyone")
    # What was sent while the history was shared stays hidden from outsiders.
    status, seen = await _messages(hs, etok, room_id)
    assert status == 200 and seen == ["for everyone"]
    status, got = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{readable}", etok)
    assert status == 200 and got["content"]["body"] == "for everyone"
    status, _ = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", etok)
    assert status == 404


async def test_unknown_event_is_404(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    room_id = await hs.create_room(atok)
    other = await hs.create_room(atok)
    elsewhere = await hs.send_message(atok, other, "x")
    for event_id in ("$doesnotexist", elsewhere):
        status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{event_id}", atok)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/context/{event_id}", atok)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/event/notanid", atok)
    assert status == 400


async def test_visibility_change_applies_from_that_point(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await hs.send_message(atok, room_id, "shared era")
    await set_state(
        hs, atok, room_id, "m.room.history_visibility", {"history_visibility": "joined"}
    )
    await hs.send_message(atok, room_id, "joined era")
    await join(hs, btok, room_id)
    _, seen = await _messages(hs, btok, room_id)
    assert seen == ["shared era"]
