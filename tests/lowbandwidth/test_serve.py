"""Low-bandwidth Matrix against a real `starling serve` (both engines): the listener is
configured (here by environment override), published in /versions, and a client
registers, logs in, creates a room, sends and syncs over CoAP+CBOR+Noise; `starling debug
coap` sends one request like curl."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from starling_client.api import Api
from starling_client.client import Client
from starling_client.lowbandwidth import LowBandwidthClient
from starling_client.transport import CoapTransport
from tests.interop.conftest import RunningServer, free_port, starling_server

__all__ = ["starling_server"]

pytestmark = pytest.mark.integration


@pytest.fixture
def lb_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """Set before `starling_server` starts: `starling serve` reads it from its environment."""
    port = free_port()
    monkeypatch.setenv("STARLING_LOW_BANDWIDTH__PORT", str(port))
    return port


@pytest.fixture
async def versions(lb_port: int, starling_server: RunningServer) -> AsyncIterator[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(starling_server.url + "/_matrix/client/versions") as resp,
    ):
        yield await resp.json()


async def test_end_to_end_over_coap_noise(
    lb_port: int,
    starling_server: RunningServer,
    versions: dict[str, Any],
) -> None:
    info = versions["org.matrix.msc3079.low_bandwidth"]
    assert info["cbor_enum_version"] == 1 and info["coap_enum_version"] == 1
    noise_info = info["org.starling.noise"]
    assert noise_info["port"] == lb_port
    key = base64.b64decode(noise_info["public_key"] + "=")
    client = await LowBandwidthClient.connect("127.0.0.1", lb_port, key)
    try:
        status, reg = await client.request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": "lb", "password": "a long password", "auth": {"type": "m.login.dummy"}},
        )
        assert status == 200, reg
        status, login = await client.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "lb"},
                "password": "a long password",
            },
        )
        assert status == 200, login
        client.access_token = login["access_token"]
        status, room = await client.request("POST", "/_matrix/client/v3/createRoom", {})
        assert status == 200, room
        status, sent = await client.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/1",
            {"msgtype": "m.text", "body": "over udp"},
        )
        assert status == 200, sent
        status, sync = await client.request("GET", "/_matrix/client/v3/sync")
        assert status == 200
        timeline = sync["rooms"]["join"][room["room_id"]]["timeline"]["events"]
        assert sent["event_id"] in [e["event_id"] for e in timeline]
    finally:
        await client.close()

    # `starling debug coap`, with the token from the environment.
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "starling.cli",
            "debug",
            "coap",
            starling_server.url,
            "GET",
            "/_matrix/client/v3/account/whoami",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STARLING_ACCESS_TOKEN": login["access_token"]},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == 200 and report["body"]["user_id"] == login["user_id"]
    assert report["bytes"]["sent"] > 0


async def test_sdk_api_chooses_coap_when_asked(
    lb_port: int, starling_server: RunningServer, versions: dict[str, Any]
) -> None:
    """`Api(transport="coap")`: requests and /sync over CoAP+Noise (the sync by Observe,
    one registration for many syncs); to-device messages are acknowledged once the caller
    has processed the answer that carried them (the stream registers again from its
    token), so a /sync from an older token no longer brings them."""
    http = Api(starling_server.url, transport="http")
    reg = await http.request(
        "POST",
        "/_matrix/client/v3/register",
        {"username": "sdk", "password": "a long password", "auth": {"type": "m.login.dummy"}},
        auth=False,
    )
    token = str(reg["access_token"])
    http.access_token = token
    api = Api(starling_server.url, token, transport="coap")
    try:
        room_id = await api.create_room({})
        transport = api.transport
        assert isinstance(transport, CoapTransport)
        initial = await api.sync(None, 0)
        assert room_id in initial["rooms"]["join"]
        since = str(initial["next_batch"])

        async def until(predicate: Any) -> dict[str, Any]:
            nonlocal since
            for _ in range(10):
                body = await api.sync(since, 5000)
                since = str(body["next_batch"])
                if predicate(body):
                    return body
            raise AssertionError("never arrived")

        def has(text: str) -> Any:
            def check(body: dict[str, Any]) -> bool:
                room = body.get("rooms", {}).get("join", {}).get(room_id, {})
                events = room.get("timeline", {}).get("events", [])
                return any(e["content"].get("body") == text for e in events)

            return check

        await api.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "by coap"})
        await until(has("by coap"))
        await http.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "by http"})
        await until(has("by http"))
        assert transport.registrations == 1  # one Observe registration served them all

        # A to-device message to ourselves: pushed, then acknowledged by the next sync.
        device = str(reg["device_id"])
        before = since
        await http.request(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            {"messages": {reg["user_id"]: {device: {"n": 1}}}},
        )
        await until(lambda body: bool(body.get("to_device", {}).get("events")))
        await http.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after"})
        await until(has("after"))
        assert transport.registrations == 2  # registered again from the processed token
        again = await http.sync(before, 0)
        assert not again.get("to_device", {}).get("events")
    finally:
        await api.close()
        await http.close()


async def test_e2ee_client_over_coap(
    lb_port: int, starling_server: RunningServer, versions: dict[str, Any], tmp_path: Any
) -> None:
    """starling_client.Client with transport="coap" (alice) and over HTTP (bob): login,
    keys, an encrypted room, a message each way, each decrypted by the other; every
    authenticated request of alice's went over CoAP."""
    http = Api(starling_server.url, transport="http")
    for name in ("alice", "bob"):
        await http.request(
            "POST",
            "/_matrix/client/v3/register",
            {"username": name, "password": "a long password", "auth": {"type": "m.login.dummy"}},
            auth=False,
        )
    await http.close()
    clients: list[Client] = []
    try:
        for name, transport in (("alice", "coap"), ("bob", "http")):
            clients.append(
                await Client.login(
                    tmp_path / name,
                    starling_server.url,
                    name,
                    "a long password",
                    "store passphrase",
                    transport=transport,
                )
            )
        alice, bob = clients
        assert isinstance(alice.api.transport, CoapTransport)

        async def until(done: Any) -> None:
            for _ in range(40):
                if done():
                    return
                for client in clients:
                    await client.sync_once(timeout_ms=300)
            assert done()

        def has(client: Client, room_id: str, body: str) -> bool:
            return any(m.body == body and m.encrypted for m in client.timeline(room_id, limit=100))

        room_id = await alice.create_room(name="lb", invite=[bob.user_id])
        await until(lambda: bob.rooms.get(room_id) is not None)
        await bob.join(room_id)
        await until(lambda: alice.rooms[room_id].members.get(bob.user_id) == "join")
        await alice.send_text(room_id, "from alice over udp")
        await until(lambda: has(bob, room_id, "from alice over udp"))
        await bob.send_text(room_id, "from bob over tcp")
        await until(lambda: has(alice, room_id, "from bob over tcp"))
        assert alice.api.transport.client.bytes_received > 0
    finally:
        for client in clients:
            await client.close()
