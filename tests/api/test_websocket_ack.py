"""The WebSocket's pushed sync stream and to-device acknowledgement (docs/transports.md):
the server's chained polls acknowledge nothing, so a to-device message pushed in a frame
the client never acknowledged comes again to a stream resumed from an older token; an
`ack` frame (or a resumed stream's `since`) deletes it. Both engines (`hs` harness)."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import ClientWebSocketResponse

from tests.api.test_websocket import connect, frame, hs_config, next_sync
from tests.support.harness import Harness

__all__ = ["hs_config"]  # the shared fixture: unlimited room rates


async def send_to_device(hs: Harness, token: str, user_id: str, text: str) -> None:
    status, body = await hs.request(
        "PUT",
        f"/_matrix/client/v3/sendToDevice/org.example.test/{secrets.token_hex(6)}",
        token,
        {"messages": {user_id: {"*": {"text": text}}}},
    )
    assert status == 200, body


def to_device_texts(body: dict[str, Any]) -> list[str]:
    return [e["content"]["text"] for e in body.get("to_device", {}).get("events", [])]


async def texts_until(ws: ClientWebSocketResponse, count: int) -> tuple[list[str], str]:
    """To-device texts of pushed frames until `count` arrived; the last next_batch."""
    seen: list[str] = []
    for _ in range(20):
        body = await next_sync(ws)
        seen += to_device_texts(body)
        if len(seen) >= count:
            return seen, body["next_batch"]
    raise AssertionError(f"only {seen} arrived")


async def test_unacked_to_device_comes_again_after_reconnect_acked_does_not(
    hs: Harness,
) -> None:
    alice, alice_tok = await hs.register("alice")
    _, bob_tok = await hs.register("bob")
    ws = await connect(hs, alice_tok)
    await ws.send_json({"type": "sync"})
    start = (await next_sync(ws))["next_batch"]

    # Two pushed frames, none acknowledged: the chained poll from the first frame's
    # token (which used to delete "one") ran before the second frame was pushed.
    await send_to_device(hs, bob_tok, alice, "one")
    seen, _ = await texts_until(ws, 1)
    assert seen == ["one"]
    await send_to_device(hs, bob_tok, alice, "two")
    seen, last = await texts_until(ws, 1)
    assert seen == ["two"]  # never the same message twice in one stream
    await ws.close()

    # The client never processed them: resuming from its own older token, both come
    # again (as HTTP /sync from that token would give them).
    ws = await connect(hs, alice_tok)
    await ws.send_json({"type": "sync", "since": start})
    seen, last = await texts_until(ws, 2)
    assert seen == ["one", "two"]
    # Acknowledged: a later resume from the old token no longer gets them.
    await ws.send_json({"type": "ack", "since": last})
    await ws.close()  # the ack is read (and done) before the close frame
    status, body = await hs.request(
        "GET", f"/_matrix/client/v3/sync?since={start}&timeout=0", alice_tok
    )
    assert status == 200 and to_device_texts(body) == []

    # A resumed stream's `since` acknowledges, as /sync's does.
    await send_to_device(hs, bob_tok, alice, "three")
    ws = await connect(hs, alice_tok)
    await ws.send_json({"type": "sync", "since": last})
    seen, after_three = await texts_until(ws, 1)
    assert seen == ["three"]
    await ws.close()
    ws = await connect(hs, alice_tok)
    await ws.send_json({"type": "sync", "since": after_three})
    await send_to_device(hs, bob_tok, alice, "four")
    seen, _ = await texts_until(ws, 1)
    assert seen == ["four"]
    await ws.close()
    status, body = await hs.request(
        "GET", f"/_matrix/client/v3/sync?since={last}&timeout=0", alice_tok
    )
    assert status == 200 and to_device_texts(body) == ["four"]  # "three" was acked


async def test_malformed_ack_frames_get_errors(hs: Harness) -> None:
    _, tok = await hs.register("carol")
    ws = await connect(hs, tok)
    for bad in ({"type": "ack"}, {"type": "ack", "since": 5}, {"type": "ack", "since": "x~"}):
        await ws.send_json(bad)
        got = await frame(ws)
        assert got["type"] == "error" and got["errcode"] == "M_INVALID_PARAM", got
    # A token from the future acknowledges nothing that is not there yet.
    await ws.send_json({"type": "ack", "since": "s999999~to_device.999999"})
    await ws.send_json({"type": "sync"})
    assert "next_batch" in await next_sync(ws)
    await ws.close()
