"""Low-bandwidth Matrix (MSC3079) over CoAP+CBOR+Noise, end to end on loopback UDP against
the in-process homeserver (both engines): register, log in, create a room, send, sync;
the /versions advert; tampered, replayed and unknown datagrams; packet loss; roaming;
Block1/Block2; limits; malformed CBOR."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from starling.api.inprocess import in_process
from starling.config import LowBandwidthConfig
from starling.lowbandwidth.server import LowBandwidthServer
from starling.protocol.lowbandwidth import codec, noise
from starling.protocol.lowbandwidth.coap import FEATURE
from starling_client.lowbandwidth import LowBandwidthClient
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

# With 25 % loss each way an exchange of 5 transmissions fails 1.6 % of the time (and
# which datagrams a seeded loss drops shifts with timing): 9 make it ~0.06 %.
FAST = {"ack_timeout": 0.3, "max_retransmit": 8}


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {
        **UNLIMITED_ROOM_RATES,
        "enable_registration": True,
        "enable_registration_without_verification": True,
    }


@pytest.fixture
async def lb(hs: Harness) -> AsyncIterator[LowBandwidthServer]:
    server = LowBandwidthServer(
        LowBandwidthConfig(port=0, max_in_flight=3, max_body_size="8K", max_sessions_per_ip=4),
        noise.generate_private_key(),
    )
    await server.start()
    server.dispatch = in_process(hs.client.server.app)
    try:
        yield server
    finally:
        await server.stop()


async def connect(lb: LowBandwidthServer, **kwargs: Any) -> LowBandwidthClient:
    return await LowBandwidthClient.connect("127.0.0.1", lb.port, lb.public_key, **kwargs)


async def register(client: LowBandwidthClient, name: str) -> dict[str, Any]:
    body = {
        "username": name,
        "password": "correct horse battery",
        "auth": {"type": "m.login.dummy"},
    }
    status, answer = await client.request("POST", "/_matrix/client/v3/register", body)
    assert status == 200, answer
    return answer


async def test_register_login_room_send_sync(lb: LowBandwidthServer) -> None:
    client = await connect(lb)
    try:
        await register(client, "alice")
        status, login = await client.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "correct horse battery",
            },
        )
        assert status == 200 and login["user_id"].startswith("@alice:")
        client.access_token = login["access_token"]
        status, room = await client.request("POST", "/_matrix/client/v3/createRoom", {"name": "lb"})
        assert status == 200, room
        room_id = room["room_id"]
        status, sent = await client.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "hello over coap"},
        )
        assert status == 200 and sent["event_id"].startswith("$")
        # The token was sent once (option 256); the session remembers it.
        status, sync = await client.request("GET", "/_matrix/client/v3/sync")
        assert status == 200
        events = sync["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["content"].get("body") for e in events if e["type"] == "m.room.message"] == [
            "hello over coap"
        ]
        # A sync answer is larger than one block: Block2 brought it whole.
        assert len(codec.encode(sync)) > 1024
        # Long-poll: a message sent meanwhile ends the wait.
        poll = asyncio.create_task(
            client.request(
                "GET",
                "/_matrix/client/v3/sync",
                params={"since": sync["next_batch"], "timeout": "10000"},
            )
        )
        await asyncio.sleep(0.2)
        other = await connect(lb)
        other.access_token = login["access_token"]
        status, _ = await other.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t2",
            {"msgtype": "m.text", "body": "second"},
        )
        assert status == 200
        await other.close()
        status, later = await asyncio.wait_for(poll, 15)
        bodies: list[str] = []
        for _ in range(5):  # other pushes (presence...) may end the poll first
            assert status == 200
            room_update = later.get("rooms", {}).get("join", {}).get(room_id)
            if room_update:
                bodies += [e["content"].get("body") for e in room_update["timeline"]["events"]]
            if "second" in bodies:
                break
            status, later = await client.request(
                "GET",
                "/_matrix/client/v3/sync",
                params={"since": later["next_batch"], "timeout": "5000"},
            )
        assert "second" in bodies
        # DEFLATE was asked for (the default): an incremental sync is compressed against
        # the answer its `since` names.
        assert client.last_content_format == codec.DEFLATE_SINCE_CONTENT_FORMAT
        # Errors are the server's Matrix errors, with the CoAP code of the HTTP status.
        status, error = await client.request("GET", "/_matrix/client/v3/rooms/nope/state")
        assert status == 400 and error["errcode"] in ("M_INVALID_PARAM", "M_UNKNOWN")
    finally:
        await client.close()


async def test_versions_advert(hs: Harness, lb: LowBandwidthServer) -> None:
    advert = lb.advert()
    assert advert["cbor_enum_version"] == 1 and advert["coap_enum_version"] == 1
    key = advert["org.starling.noise"]["public_key"]
    assert base64.b64decode(key + "=") == lb.public_key
    assert advert["org.starling.noise"]["port"] == lb.port
    assert FEATURE == "org.matrix.msc3079.low_bandwidth"


async def test_no_token_and_bad_input_get_errors(lb: LowBandwidthServer) -> None:
    client = await connect(lb, deflate=False)  # answers read raw below
    try:
        status, error = await client.request("GET", "/_matrix/client/v3/account/whoami")
        assert status == 401 and error["errcode"] == "M_MISSING_TOKEN"
        await register(client, "bob")
        # Malformed CBOR: a raw CoAP request with a truncated map.
        from aiocoap import Code, Message

        assert client._context is not None
        message = Message(code=Code.POST, uri_path=["G"], payload=b"\xa5\x02", content_format=60)
        message.remote = client._server
        response = await client._context.request(message).response
        assert (
            int(response.code) == (4 << 5)
            and codec.decode(response.payload)["errcode"] == "M_NOT_JSON"
        )
        # CBOR without a JSON form (a float, a byte string) is refused too.
        for payload in (codec.encode({"x": 1.5}, integer_keys=False), b"\x41\x00"):
            message = Message(code=Code.POST, uri_path=["G"], payload=payload, content_format=60)
            message.remote = client._server
            response = await client._context.request(message).response
            assert codec.decode(response.payload)["errcode"] in ("M_BAD_JSON", "M_NOT_JSON")
        # DEFLATE bodies: corrupt → M_NOT_JSON; a bomb stops at max_body_size → 4.13.
        bomb = codec.deflate(codec.encode({"name": "x" * 100_000}))
        for payload, errcode in ((b"\xff\x00junk", "M_NOT_JSON"), (bomb, "M_TOO_LARGE")):
            message = Message(
                code=Code.POST,
                uri_path=["G"],
                payload=payload,
                content_format=codec.DEFLATE_CONTENT_FORMAT,
            )
            message.remote = client._server
            response = await client._context.request(message).response
            assert codec.decode(response.payload)["errcode"] == errcode
        # Oversized body: 4.13 before any dispatch (Block1 is reassembled only to 8K here).
        status, error = await client.request(
            "POST", "/_matrix/client/v3/createRoom", {"name": "x" * 9000}
        )
        assert status == 413 and error["errcode"] == "M_TOO_LARGE"
        # An unknown path enum, a media path.
        status, _ = await client.request("GET", "/_matrix/client/v3/nope")
        assert status == 404
    finally:
        await client.close()


async def test_tampered_replayed_and_wrong_key_datagrams_dropped(lb: LowBandwidthServer) -> None:
    endpoint = lb.endpoints[0]
    client = await connect(lb)
    try:
        captured: list[bytes] = []
        assert client._socket is not None and client._socket.transport is not None
        transport = client._socket.transport
        original = transport.sendto

        def spy(data: bytes, *args: Any) -> None:
            captured.append(bytes(data))
            original(data, *args)

        transport.sendto = spy  # type: ignore[method-assign]
        await register(client, "carol")
        data = [d for d in captured if d[0] == noise.DATA]
        assert data
        transport.sendto(data[0])  # replayed
        assert client._channel is not None
        tampered = bytearray(client._channel.seal(b"\x40\x01\x00\x01"))  # a fresh counter
        tampered[-1] ^= 0x01
        transport.sendto(bytes(tampered))
        # A handshake for another server key, and junk.
        transport.sendto(noise.Initiator(noise.public_key(noise.generate_private_key())).init)
        transport.sendto(b"\x03" + b"\x00" * 40)
        transport.sendto(b"\xff" * 3000)
        for _ in range(50):
            if endpoint.dropped.get("handshake") and endpoint.dropped.get("size"):
                break
            await asyncio.sleep(0.02)
        assert endpoint.dropped.get("replayed", 0) >= 1
        assert endpoint.dropped.get("unauthentic", 0) >= 1
        assert endpoint.dropped.get("handshake", 0) == 1
        assert endpoint.dropped.get("size", 0) == 1
        # The session still works.
        status, _ = await client.request("GET", "/_matrix/client/versions")
        assert status == 200
    finally:
        await client.close()


async def test_packet_loss_roaming_and_session_limits(lb: LowBandwidthServer) -> None:
    client = await connect(lb, loss=0.25, seed=7, **FAST)
    try:
        answer = await register(client, "dave")
        client.access_token = answer["access_token"]
        for _ in range(3):
            status, room = await client.request("POST", "/_matrix/client/v3/createRoom", {})
            assert status == 200, room
        assert client.dropped_by_loss > 0
        client.loss = 0.0
        # A new local port (a phone changing networks): the same session answers.
        session_id = client._channel.session_id if client._channel else None
        await client.rebind()
        status, who = await client.request("GET", "/_matrix/client/v3/account/whoami")
        assert status == 200 and who["user_id"].startswith("@dave:")
        assert client._channel is not None and client._channel.session_id == session_id
    finally:
        await client.close()
    # Per-address cap (4 here): older sessions are dropped, the newest work.
    clients = [await connect(lb) for _ in range(6)]
    try:
        assert len([s for s in lb.endpoints[0].sessions.values()]) <= 4
        status, _ = await clients[-1].request("GET", "/_matrix/client/versions")
        assert status == 200
    finally:
        for c in clients:
            await c.close()


async def test_in_flight_limit(lb: LowBandwidthServer) -> None:
    client = await connect(lb)
    try:
        answer = await register(client, "erin")
        client.access_token = answer["access_token"]
        status, sync = await client.request("GET", "/_matrix/client/v3/sync")
        assert status == 200
        for _ in range(5):  # let presence and device updates settle
            _, later = await client.request(
                "GET",
                "/_matrix/client/v3/sync",
                params={"since": sync["next_batch"], "timeout": "300"},
            )
            if later["next_batch"] == sync["next_batch"]:
                break
            sync = later
        polls = [
            asyncio.create_task(
                client.request(
                    "GET",
                    "/_matrix/client/v3/sync",
                    params={"since": sync["next_batch"], "timeout": "3000", "n": str(i)},
                )
            )
            for i in range(4)
        ]
        results = await asyncio.wait_for(asyncio.gather(*polls), 15)
        statuses = sorted(s for s, _ in results)
        assert statuses == [200, 200, 200, 429]
    finally:
        await client.close()


async def test_blockwise_buffer_budget(
    lb: LowBandwidthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half-received bodies count against one budget for all sessions: over it, 5.03."""
    from starling.lowbandwidth import server as lb_server

    monkeypatch.setattr(lb_server, "BUFFER_BUDGET", 3000)
    client = await connect(lb, deflate=False)
    try:
        status, error = await client.request(
            "POST", "/_matrix/client/v3/register", {"username": "x" * 6000}
        )
        assert status == 503 and error["errcode"] == "M_LIMIT_EXCEEDED"
        status, _ = await client.request("GET", "/_matrix/client/versions")
        assert status == 200
    finally:
        await client.close()


async def test_handshakes_rate_limited_per_address(lb: LowBandwidthServer) -> None:
    endpoint = lb.endpoints[0]
    client = await connect(lb)  # one handshake of the burst
    try:
        assert client._socket is not None and client._socket.transport is not None
        for _ in range(30):
            client._socket.transport.sendto(noise.Initiator(lb.public_key).init)
        for _ in range(100):
            if endpoint.dropped.get("handshake_rate", 0) >= 5:
                break
            await asyncio.sleep(0.01)
        assert endpoint.dropped.get("handshake_rate", 0) >= 5
        # The per-address cap (4 here) may have evicted our session for those: the client
        # handshakes again once the bucket refills, and CoAP retransmits the request.
        status, _ = await client.request("GET", "/_matrix/client/versions")
        assert status == 200
    finally:
        await client.close()


async def test_packed_since_token(lb: LowBandwidthServer) -> None:
    client = await connect(lb)
    try:
        answer = await register(client, "packer")
        client.access_token = answer["access_token"]
        status, first = await client.request("GET", "/_matrix/client/v3/sync")
        assert status == 200
        since = first["next_batch"]
        assert codec.pack_token(since) is not None  # sent as `zs`, about a third as long
        status, later = await client.request(
            "GET", "/_matrix/client/v3/sync", params={"since": since, "timeout": "0"}
        )
        # The server read the same token: the answer follows it (and was compressed
        # against the answer that token names).
        assert status == 200 and isinstance(later["next_batch"], str)
        assert client.last_content_format == codec.DEFLATE_SINCE_CONTENT_FORMAT
        status, error = await client.request("GET", "/_matrix/client/v3/sync?zs=!!!")
        assert status == 400 and error["errcode"] == "M_INVALID_PARAM"
    finally:
        await client.close()


async def test_one_byte_tokens(lb: LowBandwidthServer) -> None:
    """The client's CoAP tokens count up from 0: one byte on each request and answer
    (Noise authenticates datagrams, so they need no randomness); still unique."""
    from aiocoap import Message

    client = await connect(lb)
    assert client._channel is not None
    channel = client._channel
    seal, sent = channel.seal, []

    def recording(plaintext: bytes) -> bytes:
        sent.append(Message.decode(plaintext))
        return seal(plaintext)

    channel.seal = recording  # type: ignore[method-assign]
    try:
        for _ in range(3):
            status, _ = await client.request("GET", "/_matrix/client/versions")
            assert status == 200
        tokens = [m.token for m in sent if m.code.is_request()]
        assert len(tokens) == 3 and len(set(tokens)) == 3
        assert all(len(t) == 1 for t in tokens)
    finally:
        await client.close()
