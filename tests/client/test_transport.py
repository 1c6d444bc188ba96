"""The client SDK's transport choice: the WebSocket when /versions offers it (requests and
the pushed /sync stream, reconnecting and resuming by `since`), HTTP otherwise. Against
the in-process homeserver on both engines."""

from __future__ import annotations

from typing import Any

import pytest

from starling.api import discovery
from starling_client.api import Api, MatrixError
from starling_client.transport import WebSocketTransport
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES


def base_url(hs: Harness) -> str:
    return str(hs.client.make_url("")).rstrip("/")


def texts(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id)
    events = room["timeline"]["events"] if room else []
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


async def sync_until(api: Api, since: str, room_id: str, count: int) -> tuple[list[str], str]:
    seen: list[str] = []
    for _ in range(10):
        body = await api.sync(since, 5000)
        seen += texts(body, room_id)
        since = body["next_batch"]
        if len(seen) >= count:
            break
    return seen, since


async def test_websocket_used_when_offered_and_resumes_after_drop(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    api = Api(base_url(hs), tok)
    try:
        room_id = await api.create_room({})
        assert isinstance(api.transport, WebSocketTransport)
        initial = await api.sync(None, 0)
        assert room_id in initial["rooms"]["join"]
        await api.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "one"})
        seen, since = await sync_until(api, initial["next_batch"], room_id, 1)
        assert seen == ["one"]

        # The socket drops; a message arrives meanwhile over HTTP; the SDK reopens the
        # socket, resumes from the last token: the message once, nothing duplicated.
        transport = api.transport
        assert transport._ws is not None
        await transport._ws.close()
        await hs.send_message(tok, room_id, "while away")
        seen, since = await sync_until(api, since, room_id, 1)
        assert seen == ["while away"]
        assert transport.reconnects >= 1
        await api.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "three"})
        seen, _ = await sync_until(api, since, room_id, 1)
        assert seen == ["three"]

        # Errors are the server's, as over HTTP.
        with pytest.raises(MatrixError) as error:
            await api.join("!nope:" + hs.server_name)
        assert error.value.status in (403, 404)
    finally:
        await api.close()


async def test_http_when_not_offered(hs: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(discovery.UNSTABLE_FEATURES, "org.starling.ws", False)
    _, tok = await hs.register("bob")
    api = Api(base_url(hs), tok)
    try:
        room_id = await api.create_room({})
        assert api.transport is None
        initial = await api.sync(None, 0)
        assert room_id in initial["rooms"]["join"]
    finally:
        await api.close()
    forced = Api(base_url(hs), tok, transport="http")
    try:
        monkeypatch.setitem(discovery.UNSTABLE_FEATURES, "org.starling.ws", True)
        await forced.create_room({})
        assert forced.transport is None
    finally:
        await forced.close()


async def test_logged_out_token_is_401_not_a_reconnect_loop(hs: Harness) -> None:
    _, tok = await hs.register("carol")
    api = Api(base_url(hs), tok)
    try:
        initial = await api.sync(None, 0)
        assert isinstance(api.transport, WebSocketTransport)
        status, _ = await hs.request("POST", "/_matrix/client/v3/logout", tok, {})
        assert status == 200
        with pytest.raises(MatrixError) as error:
            for _ in range(3):
                await api.sync(initial["next_batch"], 1000)
        assert error.value.status == 401 and error.value.errcode == "M_UNKNOWN_TOKEN"
        with pytest.raises(MatrixError) as error:
            await api.create_room({})
        assert error.value.status == 401
    finally:
        await api.close()


async def test_to_device_not_lost_when_pushed_response_is_not_processed(hs: Harness) -> None:
    """A to-device message pushed in a response the caller never processed (the socket
    drops, the caller retries from its own token) comes again; once the caller asks from
    that response's token (its ack), it is gone for good."""
    alice, tok = await hs.register("dora")
    _, bob_tok = await hs.register("ed")

    async def to_device(text: str) -> None:
        status, _ = await hs.request(
            "PUT",
            f"/_matrix/client/v3/sendToDevice/org.example.test/{text}",
            bob_tok,
            {"messages": {alice: {"*": {"text": text}}}},
        )
        assert status == 200

    async def until_to_device(api: Api, since: str) -> tuple[list[str], str, str]:
        """(texts, the since that brought them, their response's next_batch)."""
        for _ in range(10):
            body = await api.sync(since, 5000)
            got = [e["content"]["text"] for e in body.get("to_device", {}).get("events", [])]
            if got:
                return got, since, body["next_batch"]
            since = body["next_batch"]
        raise AssertionError("no to-device message")

    api = Api(base_url(hs), tok)
    try:
        start = (await api.sync(None, 0))["next_batch"]
        transport = api.transport
        assert isinstance(transport, WebSocketTransport)
        await to_device("one")
        got, before, after = await until_to_device(api, start)
        assert got == ["one"]
        # Not processed: the socket drops and the caller retries from its old token.
        assert transport._ws is not None
        await transport._ws.close()
        got, _, after = await until_to_device(api, before)
        assert got == ["one"]
        # Processed: the next sync from its token acknowledges it.
        await to_device("two")
        got, _, after_two = await until_to_device(api, after)
        assert got == ["two"]
        # A request frame is read after the ack frame, which is done before the next
        # frame is read: once it is answered, the ack is in the database.
        await api.request("GET", "/_matrix/client/v3/account/whoami")
        status, body = await hs.request(
            "GET", f"/_matrix/client/v3/sync?since={before}&timeout=0", tok
        )
        assert status == 200 and [e["content"]["text"] for e in body["to_device"]["events"]] == [
            "two"
        ]  # "one" acknowledged by the sync from `after`

        # A one-shot sync is one request; the stream goes on (no new socket).
        reconnects = transport.reconnects
        await to_device("three")
        body = await api.sync(after_two, 0)
        assert [e["content"]["text"] for e in body["to_device"]["events"]] == ["three"]
        assert transport.reconnects == reconnects and transport._streaming
    finally:
        await api.close()
