"""The deprecated r0 reads: GET /events (stream, limit, long-poll, peeking),
GET /initialSync and GET /rooms/{roomId}/initialSync."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.harness import Harness
from tests.sync.helpers import V3, join, leave

R0 = "/_matrix/client/r0"


async def events(hs: Harness, token: str, **params: str) -> dict[str, Any]:
    status, body = await hs.request("GET", f"{R0}/events", token, params=params)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def test_events_stream_in_order_with_limit(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    first = await events(hs, tok, timeout="0")
    assert first["chunk"] == [] and first["start"] == first["end"]
    sent = [await hs.send_message(tok, room_id, f"m{i}") for i in range(7)]
    seen: list[str] = []
    token = first["end"]
    for _ in range(10):
        page = await events(hs, tok, **{"from": token, "timeout": "0", "limit": "3"})
        assert page["start"] == token
        assert len([e for e in page["chunk"] if "event_id" in e]) <= 3
        seen += [e["event_id"] for e in page["chunk"] if e.get("type") == "m.room.message"]
        for e in page["chunk"]:
            if "event_id" in e:
                assert e["room_id"] == room_id and e["user_id"] == e["sender"]
        token = page["end"]
        if not page["chunk"]:
            break
    assert seen == sent


async def test_events_long_poll_wakes_on_message(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    start = (await events(hs, tok, timeout="0"))["end"]
    poll = asyncio.create_task(events(hs, tok, **{"from": start, "timeout": "10000"}))
    await asyncio.sleep(0.05)
    event_id = await hs.send_message(tok, room_id, "hello")
    body = await asyncio.wait_for(poll, 10)
    assert event_id in [e.get("event_id") for e in body["chunk"]]


async def test_events_carry_typing_tags_and_invites(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok)
    start = (await events(hs, btok, timeout="0"))["end"]
    status, body = await hs.request("POST", f"{V3}/rooms/{room_id}/invite", atok, {"user_id": bob})
    assert status == 200, body
    chunk = (await events(hs, btok, **{"from": start, "timeout": "0"}))["chunk"]
    invites = [e for e in chunk if e.get("type") == "m.room.member"]
    assert [e["state_key"] for e in invites] == [bob]
    assert invites[0]["content"]["membership"] == "invite"
    # The room's messages before joining are not theirs.
    assert not [e for e in chunk if e.get("type") == "m.room.create"]
    start = (await events(hs, atok, timeout="0"))["end"]
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/typing/{alice}", atok, {"typing": True, "timeout": 5000}
    )
    assert status == 200, body
    status, body = await hs.request(
        "PUT", f"{V3}/user/{alice}/rooms/{room_id}/tags/work", atok, {"order": 1}
    )
    assert status == 200, body
    chunk = (await events(hs, atok, **{"from": start, "timeout": "0"}))["chunk"]
    typing = [e for e in chunk if e["type"] == "m.typing"]
    assert typing and typing[0]["room_id"] == room_id
    assert typing[0]["content"]["user_ids"] == [alice]
    tags = [e for e in chunk if e["type"] == "m.tag"]
    assert tags and tags[0]["room_id"] == room_id and "work" in tags[0]["content"]["tags"]


async def test_events_peeking_needs_world_readable(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat")
    status, body = await hs.request(
        "GET", f"{R0}/events", btok, params={"room_id": room_id, "timeout": "0"}
    )
    assert status == 403, body
    status, body = await hs.request(
        "PUT",
        f"{V3}/rooms/{room_id}/state/m.room.history_visibility",
        atok,
        {"history_visibility": "world_readable"},
    )
    assert status == 200, body
    start = (await events(hs, btok, room_id=room_id, timeout="0"))["end"]
    event_id = await hs.send_message(atok, room_id, "peek")
    chunk = (await events(hs, btok, room_id=room_id, timeout="0", **{"from": start}))["chunk"]
    assert [e["event_id"] for e in chunk if "event_id" in e] == [event_id]
    # Without room_id bob sees nothing of a room he is not in.
    chunk = (await events(hs, btok, timeout="0", **{"from": start}))["chunk"]
    assert event_id not in [e.get("event_id") for e in chunk]


async def test_events_bad_params(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    for params in ({"from": "garbage"}, {"timeout": "x"}, {"limit": "-1"}, {"room_id": "nope"}):
        status, body = await hs.request("GET", f"{R0}/events", tok, params=params)
        assert status == 400, (params, body)
        assert body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), body


async def test_initial_sync_and_room_initial_sync(hs: Harness) -> None:
    alice, atok = await hs.register("alice")
    bob, btok = await hs.register("bob")
    room_id = await hs.create_room(atok, preset="public_chat", name="Hall")
    await join(hs, btok, room_id)
    for i in range(4):
        await hs.send_message(atok, room_id, f"m{i}")
    status, body = await hs.request("GET", f"{V3}/initialSync", btok, params={"limit": "2"})
    assert status == 200, body
    assert body["end"].startswith("s")
    (room,) = [r for r in body["rooms"] if r["room_id"] == room_id]
    assert room["membership"] == "join"
    assert [e["content"]["body"] for e in room["messages"]["chunk"]] == ["m2", "m3"]
    assert {e["type"] for e in room["state"]} >= {"m.room.create", "m.room.name"}
    assert room["visibility"] == "private"
    # The room view; messages.end works as an /events `from`.
    status, body = await hs.request("GET", f"{R0}/rooms/{room_id}/initialSync", btok)
    assert status == 200, body
    assert body["room_id"] == room_id and body["membership"] == "join"
    members = {e["state_key"] for e in body["state"] if e["type"] == "m.room.member"}
    assert members == {alice, bob}
    assert {p["content"]["user_id"] for p in body["presence"]} == {alice, bob}
    event_id = await hs.send_message(atok, room_id, "after")
    chunk = (await events(hs, btok, timeout="0", **{"from": body["messages"]["end"]}))["chunk"]
    assert event_id in [e.get("event_id") for e in chunk]
    # After leaving: archived only, as the room was when they left.
    await leave(hs, btok, room_id)
    await hs.send_message(atok, room_id, "later")
    status, body = await hs.request("GET", f"{V3}/initialSync", btok)
    assert room_id not in [r["room_id"] for r in body["rooms"]]
    status, body = await hs.request(
        "GET", f"{V3}/initialSync", btok, params={"archived": "true", "limit": "1"}
    )
    (room,) = [r for r in body["rooms"] if r["room_id"] == room_id]
    assert room["membership"] == "leave"
    assert [e["type"] for e in room["messages"]["chunk"]] == ["m.room.member"]
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/initialSync", btok)
    assert status == 200 and body["membership"] == "leave"
    assert body["presence"] == [] and body["receipts"] == []


async def test_room_initial_sync_refused_to_outsiders(hs: Harness) -> None:
    _, atok = await hs.register("alice")
    _, btok = await hs.register("bob")
    room_id = await hs.create_room(atok)
    status, body = await hs.request("GET", f"{V3}/rooms/{room_id}/initialSync", btok)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body


async def test_post_send_and_redact_without_transaction_id(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    ids = []
    for _ in range(2):
        status, body = await hs.request(
            "POST", f"{R0}/rooms/{room_id}/send/m.room.message", tok, {"body": "x"}
        )
        assert status == 200, body
        ids.append(body["event_id"])
    assert ids[0] != ids[1]  # not idempotent: each POST is a new event
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/redact/{ids[0]}", tok, {"reason": "oops"}
    )
    assert status == 200, body
    status, event = await hs.request("GET", f"{V3}/rooms/{room_id}/event/{ids[0]}", tok)
    assert status == 200 and event["content"] == {}, event
    assert event["unsigned"]["redacted_by"] == body["event_id"]


async def test_redacting_an_event_of_another_room_is_400(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_a = await hs.create_room(tok)
    room_b = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_a, "x")
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_b}/redact/{event_id}/t1", tok, {"reason": "wrong room"}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_b}/redact/$nope/t2", tok, {"reason": "unknown"}
    )
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
