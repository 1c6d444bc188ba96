"""GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event on one server: the closest
event in each direction, ties, the room's bounds, bad parameters and who may ask."""

from __future__ import annotations

from urllib.parse import quote

from tests.support.harness import Harness

PATH = "/_matrix/client/v1/rooms/{}/timestamp_to_event"


async def ts_of(hs: Harness, token: str, room_id: str, event_id: str) -> int:
    status, body = await hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{quote(event_id)}", token
    )
    assert status == 200, body
    ts: int = body["origin_server_ts"]
    return ts


async def lookup(
    hs: Harness, token: str | None, room_id: str, **params: str
) -> tuple[int, dict[str, object]]:
    status, body = await hs.request("GET", PATH.format(room_id), token, params=params)
    return status, body


async def test_closest_event_each_way(hs: Harness) -> None:
    _, token = await hs.register()
    room_id = await hs.create_room(token, preset="private_chat")
    ids = [await hs.send_message(token, room_id, f"m{i}") for i in range(3)]
    stamps = [await ts_of(hs, token, room_id, e) for e in ids]
    last = ids[-1], stamps[-1]

    # Exactly at a message's time: that message (the last of equal times) each way.
    status, body = await lookup(hs, token, room_id, ts=str(stamps[1]), dir="b")
    assert status == 200 and body["origin_server_ts"] == stamps[1]
    status, body = await lookup(hs, token, room_id, ts=str(stamps[1]), dir="f")
    assert status == 200 and body["origin_server_ts"] == stamps[1]
    # After everything: backwards finds the newest, forwards nothing.
    status, body = await lookup(hs, token, room_id, ts=str(last[1] + 60_000), dir="b")
    assert (status, body) == (200, {"event_id": last[0], "origin_server_ts": last[1]})
    status, body = await lookup(hs, token, room_id, ts=str(last[1] + 60_000), dir="f")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    # Before the room existed: forwards finds its first event (the create event).
    status, body = await lookup(hs, token, room_id, ts="0", dir="f")
    assert status == 200
    status, create = await hs.request(
        "GET",
        f"/_matrix/client/v3/rooms/{room_id}/state/m.room.create",
        token,
        params={"format": "event"},
    )
    assert status == 200 and body["event_id"] == create["event_id"], (body, create)
    status, body = await lookup(hs, token, room_id, ts="0", dir="b")
    assert status == 404


async def test_bad_parameters_and_outsiders(hs: Harness) -> None:
    _, token = await hs.register()
    _, other = await hs.register()
    room_id = await hs.create_room(token, preset="private_chat")
    for params, errcode in (
        ({"dir": "f"}, "M_MISSING_PARAM"),
        ({"ts": "1"}, "M_MISSING_PARAM"),
        ({"ts": "1", "dir": "x"}, "M_INVALID_PARAM"),
        ({"ts": "soon", "dir": "f"}, "M_INVALID_PARAM"),
        ({"ts": "-5", "dir": "f"}, "M_INVALID_PARAM"),
    ):
        status, body = await lookup(hs, token, room_id, **params)
        assert (status, body["errcode"]) == (400, errcode), params
    status, body = await lookup(hs, other, room_id, ts="0", dir="f")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await lookup(hs, None, room_id, ts="0", dir="f")
    assert status == 401
    status, body = await lookup(hs, token, "!unknown:test.local", ts="0", dir="f")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # A world-readable room may be searched by anyone with an account.
    public = await hs.create_room(
        token,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "world_readable"},
            }
        ],
    )
    status, body = await lookup(hs, other, public, ts="0", dir="f")
    assert status == 200, body
