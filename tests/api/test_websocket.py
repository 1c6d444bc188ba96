"""The WebSocket transport (org.starling.ws): auth, pushed sync, requests, resume, limits.
Runs on both engines through the `hs` harness."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from starling.api.client.websocket import MAX_MESSAGE_BYTES, WS_PATH
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

WAIT = 10.0


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES


async def frame(ws: ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=WAIT)
    assert message.type is WSMsgType.TEXT, message
    parsed: dict[str, Any] = orjson.loads(message.data)
    return parsed


async def connect(hs: Harness, token: str) -> ClientWebSocketResponse:
    ws = await hs.client.ws_connect(WS_PATH)
    await ws.send_json({"type": "auth", "access_token": token})
    hello = await frame(ws)
    assert hello["type"] == "authenticated", hello
    return ws


async def next_sync(ws: ClientWebSocketResponse) -> dict[str, Any]:
    for _ in range(20):
        got = await frame(ws)
        if got["type"] == "sync":
            body: dict[str, Any] = got["body"]
            return body
        assert got["type"] != "error", got
    raise AssertionError("no sync frame")


async def messages_until(
    ws: ClientWebSocketResponse, room_id: str, count: int
) -> tuple[list[str], str]:
    """Message bodies of `room_id` from pushed sync frames (other pushes, such as presence,
    may come first) until `count` arrived; and the last `next_batch`."""
    seen: list[str] = []
    for _ in range(20):
        body = await next_sync(ws)
        seen += bodies(body, room_id)
        if len(seen) >= count:
            return seen, body["next_batch"]
    raise AssertionError(f"only {seen} arrived")


def bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id)
    if room is None:
        return []
    return [
        e["content"]["body"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"
    ]


async def test_advertised_in_versions(hs: Harness) -> None:
    status, body = await hs.request("GET", "/_matrix/client/versions")
    assert status == 200
    assert body["unstable_features"]["org.starling.ws"] is True


async def test_no_token_closes_with_error(hs: Harness) -> None:
    ws = await hs.client.ws_connect(WS_PATH)
    await ws.send_json({"type": "sync"})
    error = await frame(ws)
    assert error["type"] == "error" and error["errcode"] == "M_MISSING_TOKEN"
    closing = await ws.receive(timeout=WAIT)
    assert closing.type is WSMsgType.CLOSE
    assert ws.close_code == 1008


async def test_invalid_token_closes_with_error(hs: Harness) -> None:
    ws = await hs.client.ws_connect(WS_PATH)
    await ws.send_json({"type": "auth", "access_token": "nope"})
    error = await frame(ws)
    assert error["errcode"] == "M_UNKNOWN_TOKEN"
    assert (await ws.receive(timeout=WAIT)).type is WSMsgType.CLOSE


async def test_bad_header_token_refused_before_upgrade(hs: Harness) -> None:
    resp = await hs.client.get(
        WS_PATH,
        headers={
            "Authorization": "Bearer nope",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 401
    assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"


async def test_token_in_url_refused(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    status, body = await hs.request("GET", WS_PATH, params={"access_token": tok})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"


async def test_header_auth_and_pushed_sync_of_http_message(hs: Harness) -> None:
    _, alice = await hs.register("alice")
    bob_id, bob = await hs.register("bob")
    room_id = await hs.create_room(alice, invite=[bob_id])
    status, _ = await hs.request("POST", f"/_matrix/client/v3/rooms/{room_id}/join", bob)
    assert status == 200
    ws = await hs.client.ws_connect(
        WS_PATH, headers={"Authorization": f"Bearer {bob}"}, compress=15
    )
    assert ws.compress == 15  # permessage-deflate negotiated
    assert (await frame(ws))["type"] == "authenticated"
    await ws.send_json({"type": "sync"})
    initial = await next_sync(ws)
    assert room_id in initial["rooms"]["join"]
    await hs.send_message(alice, room_id, "over http")
    seen, next_batch = await messages_until(ws, room_id, 1)
    assert seen == ["over http"]
    assert next_batch != initial["next_batch"]
    await ws.close()


async def test_request_frame_sends_and_resume_has_no_duplicates(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    ws = await connect(hs, tok)
    await ws.send_json({"type": "sync"})
    initial = await next_sync(ws)
    path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"
    await ws.send_json(
        {
            "type": "request",
            "id": "r1",
            "method": "PUT",
            "path": path,
            "body": {"msgtype": "m.text", "body": "over ws"},
        }
    )
    seen: list[str] = []
    response: dict[str, Any] | None = None
    last_batch = initial["next_batch"]
    for _ in range(20):
        got = await frame(ws)
        if got["type"] == "response":
            response = got
        elif got["type"] == "sync":
            seen += bodies(got["body"], room_id)
            last_batch = got["body"]["next_batch"]
        if response is not None and seen:
            break
    assert response is not None and response["id"] == "r1"
    assert response["status"] == 200 and response["body"]["event_id"].startswith("$")
    assert seen == ["over ws"]
    await ws.close()

    # Meanwhile a message arrives; the new socket resumes from the last token.
    await hs.send_message(tok, room_id, "while away")
    ws = await connect(hs, tok)
    await ws.send_json({"type": "sync", "since": last_batch})
    seen, _ = await messages_until(ws, room_id, 1)
    assert seen == ["while away"]
    await ws.close()


async def test_request_errors_match_http(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    ws = await connect(hs, tok)
    await ws.send_json(
        {"type": "request", "id": "x", "method": "GET", "path": "/_matrix/client/v3/nope"}
    )
    got = await frame(ws)
    assert got["type"] == "response" and got["status"] == 404
    assert got["body"]["errcode"] == "M_UNRECOGNIZED"
    await ws.send_json(
        {
            "type": "request",
            "id": "y",
            "method": "GET",
            "path": "/_matrix/client/v3/rooms/not-a-room/state",
        }
    )
    got = await frame(ws)
    assert got["id"] == "y" and got["status"] == 400
    await ws.close()


@pytest.mark.parametrize(
    "sent, errcode",
    [
        ("not json", "M_NOT_JSON"),
        ("[1]", "M_NOT_JSON"),
        ('{"type": "what"}', "M_UNRECOGNIZED"),
        ('{"type": "request", "method": "GET", "path": "/_matrix/client/v3/sync"}', None),
        ('{"type": "request", "id": "a", "method": "TRACE", "path": "/x"}', "M_INVALID_PARAM"),
        ('{"type": "request", "id": "a", "method": "GET", "path": "http://x/"}', None),
        (
            '{"type": "request", "id": "a", "method": "GET", "path": "/_matrix/client/../media/v3/config"}',
            None,
        ),
        (
            '{"type": "request", "id": "a", "method": "GET", "path": "/_matrix/client/v1/media/config"}',
            None,
        ),
        ('{"type": "sync", "since": 5}', "M_INVALID_PARAM"),
        ('{"type": "auth", "access_token": "again"}', "M_INVALID_PARAM"),
    ],
)
async def test_malformed_frames_get_errors(hs: Harness, sent: str, errcode: str | None) -> None:
    _, tok = await hs.register("alice")
    ws = await connect(hs, tok)
    await ws.send_str(sent)
    got = await frame(ws)
    assert got["type"] == "error"
    assert got["errcode"] == (errcode or "M_INVALID_PARAM")
    # The socket still works.
    await ws.send_json(
        {"type": "request", "id": "w", "method": "GET", "path": "/_matrix/client/v3/account/whoami"}
    )
    got = await frame(ws)
    assert got["id"] == "w" and got["status"] == 200
    await ws.close()


async def test_oversize_frame_closes_socket(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    ws = await connect(hs, tok)
    await ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
    closing = await ws.receive(timeout=WAIT)
    assert closing.type is WSMsgType.CLOSE
    assert ws.close_code == 1009


async def test_too_many_requests_in_flight(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    status, body = await hs.request("GET", "/_matrix/client/v3/sync", tok)
    assert status == 200
    since = body["next_batch"]
    ws = await connect(hs, tok)
    # Long-polling syncs with nothing new stay in flight until the socket closes.
    for i in range(9):
        await ws.send_json(
            {
                "type": "request",
                "id": f"s{i}",
                "method": "GET",
                "path": f"/_matrix/client/v3/sync?timeout=20000&since={since}",
            }
        )
    got = await frame(ws)
    assert got == {
        "type": "error",
        "errcode": "M_LIMIT_EXCEEDED",
        "error": got["error"],
        "id": "s8",
    }
    await asyncio.wait_for(ws.close(), WAIT)


async def test_logout_closes_the_socket(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    ws = await connect(hs, tok)
    await ws.send_json({"type": "sync"})
    await next_sync(ws)
    status, _ = await hs.request("POST", "/_matrix/client/v3/logout", tok, {})
    assert status == 200
    errors: list[str] = []
    for _ in range(10):
        message = await ws.receive(timeout=WAIT)
        if message.type is WSMsgType.CLOSE:
            break
        got = orjson.loads(message.data)
        if got["type"] == "error":
            errors.append(got["errcode"])
    # The server's close frame says 1008. (ws.close_code can read 1006 when the server
    # tears the connection down before our automatic close reply is written.)
    assert message.type is WSMsgType.CLOSE and message.data == 1008
    assert errors and set(errors) == {"M_UNKNOWN_TOKEN"}
