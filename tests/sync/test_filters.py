"""Filters: the filter API, stored and inline filters in /sync and /messages, matching."""

from __future__ import annotations

from typing import Any

import pytest

from starling.errors import MatrixError
from starling.sync.filtering import parse_event_filter, parse_sync_filter
from tests.support.harness import Harness
from tests.sync.helpers import V3, join, sync, timeline_bodies


async def test_filter_api_roundtrip_and_ownership(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    _bob, btok = await hs.register("bob")
    definition = {
        "room": {"timeline": {"limit": 3, "types": ["m.room.*"]}},
        "event_fields": ["type"],
    }
    status, body = await hs.request("POST", f"{V3}/user/{alice}/filter", atok, definition)
    assert status == 200, body
    filter_id = body["filter_id"]
    assert isinstance(filter_id, str) and "{" not in filter_id
    # The same filter again keeps its ID; another gets a new one.
    status, again = await hs.request("POST", f"{V3}/user/{alice}/filter", atok, definition)
    assert again["filter_id"] == filter_id
    status, other = await hs.request("POST", f"{V3}/user/{alice}/filter", atok, {"presence": {}})
    assert other["filter_id"] != filter_id
    status, got = await hs.request("GET", f"{V3}/user/{alice}/filter/{filter_id}", atok)
    assert status == 200 and got == definition
    # Someone else's filters: 403 either way.
    status, body = await hs.request("GET", f"{V3}/user/{alice}/filter/{filter_id}", btok)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await hs.request("POST", f"{V3}/user/{alice}/filter", btok, definition)
    assert status == 403
    # Unknown filter IDs.
    for fid in ("999", "abc"):
        status, body = await hs.request("GET", f"{V3}/user/{alice}/filter/{fid}", atok)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"


@pytest.mark.parametrize(
    "bad",
    [
        {"room": {"timeline": {"types": "m.room.message"}}},
        {"room": {"timeline": {"senders": ["not-a-user"]}}},
        {"room": {"not_rooms": [1]}},
        {"room": {"include_leave": "yes"}},
        {"room": {"state": {"lazy_load_members": 1}}},
        {"presence": {"limit": -1}},
        {"presence": []},
        {"event_format": "raw"},
        {"event_fields": "content"},
        {"event_fields": [""]},
        {"room": {"timeline": {"types": ["x"] * 1001}}},
    ],
)
async def test_bad_filters_are_400(hs: Harness, bad: dict[str, Any]) -> None:
    alice, tok = await hs.register("alice")
    status, body = await hs.request("POST", f"{V3}/user/{alice}/filter", tok, bad)
    assert status == 400 and body["errcode"] == "M_BAD_JSON", body


async def test_filter_size_and_body_errors(hs: Harness) -> None:
    alice, tok = await hs.register("alice")
    huge = {"room": {"timeline": {"types": ["x" * 100] * 900}}}
    status, body = await hs.request("POST", f"{V3}/user/{alice}/filter", tok, huge)
    assert status == 413 and body["errcode"] == "M_TOO_LARGE"
    status, body = await hs.request("POST", f"{V3}/user/{alice}/filter", tok, raw=b"nope")
    assert status == 400 and body["errcode"] == "M_NOT_JSON"


def test_type_wildcards_and_precedence() -> None:
    f = parse_event_filter({"types": ["m.room.*", "org.example"], "not_types": ["m.room.member"]})
    assert f.matches("m.room.message")
    assert f.matches("org.example")
    assert not f.matches("org.example.more")
    assert not f.matches("m.room.member")  # not_types wins
    assert not f.matches("m.call.invite")
    star = parse_event_filter({"types": ["*.invite"]})
    assert star.matches("m.call.invite") and not star.matches("m.call.answer")
    assert not parse_event_filter({"types": []}).matches("m.room.message")
    senders = parse_event_filter({"senders": ["@a:x"], "not_senders": ["@b:x"]})
    assert senders.matches("t", "@a:x") and not senders.matches("t", "@b:x")
    assert not senders.matches("t", "@c:x")
    url = parse_event_filter({"contains_url": True})
    assert url.matches("m.room.message", content={"url": "mxc://x/y"})
    assert not url.matches("m.room.message", content={"body": "x"})
    no_url = parse_event_filter({"contains_url": False})
    assert no_url.matches("m.room.message", content={"body": "x"})
    # Regex metacharacters in types are literal.
    dots = parse_event_filter({"types": ["a.b"]})
    assert not dots.matches("aXb")


def test_sync_filter_defaults_and_caps() -> None:
    f = parse_sync_filter({})
    assert f.timeline_limit == 10 and f.includes_room("!a:x")
    big = parse_sync_filter({"room": {"timeline": {"limit": 10**9}}})
    assert big.timeline_limit == 100
    rooms = parse_sync_filter({"room": {"rooms": ["!a:x", "!b:x"], "not_rooms": ["!b:x"]}})
    assert rooms.includes_room("!a:x") and not rooms.includes_room("!b:x")
    assert not rooms.includes_room("!c:x")
    # Unknown keys are allowed (forward compatibility); unread_thread_notifications accepted.
    parse_sync_filter({"future": 1, "room": {"timeline": {"unread_thread_notifications": True}}})
    with pytest.raises(MatrixError):
        parse_sync_filter({"room": {"timeline": {"limit": 1.5}}})


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_limit_refused(limit: float) -> None:
    """Found by tests/fuzz: NaN and infinity raised ValueError / OverflowError."""
    with pytest.raises(MatrixError):
        parse_sync_filter({"room": {"timeline": {"limit": limit}}})


async def test_filters_in_sync_stored_and_inline(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_a = await hs.create_room(atok, preset="public_chat")
    room_b = await hs.create_room(atok)
    await join(hs, btok, room_a)
    await hs.send_message(atok, room_a, "from alice")
    await hs.send_message(btok, room_a, "from bob")
    await hs.send_message(atok, room_b, "in b")
    # Inline: only messages, only from bob, only room A.
    inline = {
        "room": {
            "rooms": [room_a],
            "timeline": {"types": ["m.room.mess*"], "senders": [bob]},
        }
    }
    body = await sync(hs, atok, filter=inline)
    assert set(body["rooms"]["join"]) == {room_a}
    events = body["rooms"]["join"][room_a]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == ["from bob"]
    # Stored: not_rooms, state types, event_fields.
    definition = {
        "room": {
            "not_rooms": [room_a],
            "state": {"types": ["m.room.create"]},
            "timeline": {"limit": 1},
        },
        "event_fields": ["type", "content.body"],
    }
    status, created = await hs.request("POST", f"{V3}/user/{alice}/filter", atok, definition)
    body = await sync(hs, atok, filter=created["filter_id"])
    assert set(body["rooms"]["join"]) == {room_b}
    room = body["rooms"]["join"][room_b]
    assert [e["type"] for e in room["state"]["events"]] == ["m.room.create"]
    msg = [e for e in room["timeline"]["events"] if e["type"] == "m.room.message"]
    assert msg == [{"type": "m.room.message", "content": {"body": "in b"}}]
    # Another user's filter ID is unknown to this user.
    status, err = await hs.request(
        "GET", f"{V3}/sync", btok, params={"filter": created["filter_id"]}
    )
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"


async def test_federation_event_format(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    await hs.send_message(tok, room_id, "pdu")
    body = await sync(hs, tok, filter={"event_format": "federation"})
    event = body["rooms"]["join"][room_id]["timeline"]["events"][-1]
    assert "signatures" in event and "hashes" in event and "depth" in event
    assert event["room_id"] == room_id


async def test_messages_filter(hs: Harness) -> None:
    _alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    await join(hs, btok, room_id)
    for i in range(30):
        await hs.send_message(atok if i % 10 else btok, room_id, f"n{i}")
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        atok,
        params={
            "dir": "b",
            "limit": "2",
            "filter": f'{{"senders": ["{bob}"], "types": ["m.room.message"]}}',
        },
    )
    assert status == 200, page
    assert [e["content"]["body"] for e in page["chunk"]] == ["n20", "n10"]
    status, page = await hs.request(
        "GET",
        f"{V3}/rooms/{room_id}/messages",
        atok,
        params={
            "dir": "b",
            "from": page["end"],
            "filter": f'{{"senders": ["{bob}"], "types": ["m.room.message"]}}',
        },
    )
    assert [e["content"]["body"] for e in page["chunk"]] == ["n0"]
    assert timeline_bodies({"timeline": {"events": page["chunk"]}}) == ["n0"]
