"""/sync by CoAP Observe (RFC 7641, MSC3079) over the Noise transport, both engines: the
first answer, pushed notifications chained by next_batch (each message exactly once),
a notification larger than one block (Block2 from the stored answer), packet loss, a
new registration resuming from the last next_batch, and the stream ending with an error
when the token is logged out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from starling.lowbandwidth.server import LowBandwidthServer
from starling.protocol.lowbandwidth import codec
from starling_client.lowbandwidth import LowBandwidthClient, ObserveEnded
from tests.lowbandwidth.test_coap import FAST, connect, hs_config, lb, register

__all__ = ["hs_config", "lb"]  # fixtures


def bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [
        str(e["content"].get("body"))
        for e in room.get("timeline", {}).get("events", [])
        if e["type"] == "m.room.message"
    ]


async def setup(lb: LowBandwidthServer, name: str) -> tuple[LowBandwidthClient, str]:
    client = await connect(lb)
    answer = await register(client, name)
    client.access_token = answer["access_token"]
    status, room = await client.request("POST", "/_matrix/client/v3/createRoom", {})
    assert status == 200, room
    return client, str(room["room_id"])


async def send(client: LowBandwidthClient, room_id: str, txn: str, body: str) -> None:
    status, answer = await client.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
    )
    assert status == 200, answer


async def collect(
    stream: AsyncIterator[dict[str, Any]], room_id: str, want: list[str], seen: list[str]
) -> tuple[str, int]:
    """Reads the stream until `want` were all seen: (the last next_batch, answers read)."""
    next_batch = ""
    count = 0
    while not set(want) <= set(seen):
        sync = await asyncio.wait_for(anext(stream), 10)
        count += 1
        seen += bodies(sync, room_id)
        next_batch = sync["next_batch"]
    return next_batch, count


async def test_observe_pushes_each_message_once(lb: LowBandwidthServer) -> None:
    client, room_id = await setup(lb, "obs1")
    sender = await connect(lb)
    sender.access_token = client.access_token
    await send(client, room_id, "t0", "before")
    stream = client.observe_sync()
    try:
        first = await asyncio.wait_for(anext(stream), 10)
        assert bodies(first, room_id) == ["before"]  # the initial sync
        datagrams = client.datagrams_sent
        for i in range(3):
            await send(sender, room_id, f"t{i + 1}", f"pushed {i}")
        seen: list[str] = []
        _, pushed = await collect(stream, room_id, ["pushed 0", "pushed 1", "pushed 2"], seen)
        assert seen == ["pushed 0", "pushed 1", "pushed 2"]  # in order, none twice
        # No request was sent for them: only the ACK of each confirmable notification
        # (one may have been queued, and acknowledged, before `datagrams` was read).
        assert 0 < client.datagrams_sent - datagrams <= pushed
        # Pushed syncs are compressed against the registration's first answer and the
        # previous one (both ends hold exactly those; a mismatch would not decode).
        assert client.last_content_format == codec.DEFLATE_BASE_CONTENT_FORMAT
        # A notification over one block (1024 bytes, incompressible text): its other
        # blocks are fetched from the stored answer, and it decodes whole.
        big = os.urandom(1500).hex()
        await send(sender, room_id, "big", big)
        seen = []
        await collect(stream, room_id, [big], seen)
        assert seen == [big]
        await send(sender, room_id, "after-big", "after big")
        seen = []
        await collect(stream, room_id, ["after big"], seen)
        assert seen == ["after big"]
    finally:
        await stream.aclose()
        await client.close()
        await sender.close()


async def test_observe_resumes_from_next_batch_and_survives_loss(
    lb: LowBandwidthServer,
) -> None:
    client, room_id = await setup(lb, "obs2")
    sender = await connect(lb)
    sender.access_token = client.access_token
    stream = client.observe_sync()
    try:
        await asyncio.wait_for(anext(stream), 10)
        await send(sender, room_id, "a", "one")
        seen: list[str] = []
        since, _ = await collect(stream, room_id, ["one"], seen)
    finally:
        await stream.aclose()
        await client.close()
    # Messages sent while nobody observes come with the registration from `since`.
    await send(sender, room_id, "b", "two")
    await send(sender, room_id, "c", "three")
    lossy = await connect(lb, loss=0.25, seed=3, **FAST)
    lossy.access_token = sender.access_token
    stream = lossy.observe_sync(since, params={"timeout": "5000"})
    try:
        seen = []
        since, _ = await collect(stream, room_id, ["two", "three"], seen)
        assert seen == ["two", "three"]
        for i in range(3):  # pushed through 25 % loss: CoAP retransmits them
            await send(sender, room_id, f"d{i}", f"lossy {i}")
        seen = []
        await collect(stream, room_id, [f"lossy {i}" for i in range(3)], seen)
        assert seen == ["lossy 0", "lossy 1", "lossy 2"]
        assert lossy.dropped_by_loss > 0
    finally:
        await stream.aclose()
        await lossy.close()
        await sender.close()


async def test_observe_ends_when_logged_out_and_one_per_session(
    lb: LowBandwidthServer,
) -> None:
    client, _ = await setup(lb, "obs3")
    session = next(
        s for s in lb.endpoints[0].sessions.values() if s.access_token == client.access_token
    )
    first = client.observe_sync()
    second = client.observe_sync()
    try:
        await asyncio.wait_for(anext(first), 10)
        replaced = session.observation
        assert replaced is not None
        # A second registration of the session replaces the first (server side).
        await asyncio.wait_for(anext(second), 10)
        await asyncio.sleep(0.1)
        assert replaced.done()
        assert session.observation is not None and session.observation is not replaced
        # Logged out elsewhere: the stream ends with the server's error.
        other = await connect(lb)
        other.access_token = client.access_token
        status, _ = await other.request("POST", "/_matrix/client/v3/logout", {})
        assert status == 200
        await other.close()
        with pytest.raises(ObserveEnded) as ended:
            for _ in range(3):  # a poll authenticated before the logout may answer first
                await asyncio.wait_for(anext(second), 10)
        assert ended.value.status == 401
        assert ended.value.body["errcode"] == "M_UNKNOWN_TOKEN"
        await asyncio.sleep(0.1)
        assert session.observation is None
    finally:
        await first.aclose()
        await second.aclose()
        await client.close()
