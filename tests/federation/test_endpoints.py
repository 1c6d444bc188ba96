"""The federation endpoints of the receipt pipeline and the DAG reads over HTTP, signed
with X-Matrix by a fake remote server whose key our keyring holds (both engines)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from starling.app import build_listener_app
from starling.config import Listener, ListenerResource
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from starling.protocol.signing import build_server_keys
from starling.protocol.x_matrix import sign_request
from tests.federation.dag import Dag, FakeServer
from tests.support.harness import Harness

REMOTE = "remote.example"


class Remote:
    """A fake remote server in a room with our user, talking to `hs` over HTTP."""

    def __init__(self, hs: Harness, client: TestClient, rv: str) -> None:
        self.hs = hs
        self.http = client
        self.server = FakeServer(REMOTE)
        local = FakeServer(hs.server_name, hs.services.signing_key)
        self.dag = Dag(KNOWN_ROOM_VERSIONS[rv], [self.server, local])
        self.alice = self.server.user("alice")

    async def setup(self) -> None:
        keys = build_server_keys(REMOTE, [self.server.key], int(time.time() * 1000) + 86_400_000)
        await self.hs.services.federation.keyring.accept_response(REMOTE, keys, from_server=REMOTE)
        self.dag.standard_room(self.alice)
        bob, _ = await self.hs.register("bob")
        join = self.dag.join(bob)
        state = self.dag.state_before(join)
        await self.hs.services.federation_inbound.events.process_send_join_response(
            REMOTE,
            self.dag.room_id,
            self.dag.room_version,
            join,
            [dict(e.pdu) for e in self.dag.state_events(state)],
            [dict(e.pdu) for e in self.dag.auth_chain(state.values())],
        )

    async def request(
        self, method: str, path: str, body: Any = None, *, origin: str = REMOTE, signed: bool = True
    ) -> tuple[int, Any]:
        headers = {}
        if signed:
            key = self.server.key if origin == REMOTE else FakeServer(origin).key
            headers["Authorization"] = sign_request(
                key,
                method=method,
                uri=path,
                origin=origin,
                destination=self.hs.server_name,
                content=body,
            )
        data = orjson.dumps(body) if body is not None else None
        # Sent exactly as signed: no re-encoding of %2B, %2F... in event IDs.
        url = URL(str(self.http.make_url("")).rstrip("/") + path, encoded=True)
        async with self.http.session.request(method, url, headers=headers, data=data) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None


@pytest.fixture
async def federation_client(hs: Harness) -> AsyncIterator[TestClient]:
    listener = Listener(port=0, resources=[ListenerResource(names=["federation"])])
    app = build_listener_app(hs.services, listener)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize("rv", ["3", "12"])
async def test_send_then_read_back(hs: Harness, federation_client: TestClient, rv: str) -> None:
    remote = Remote(hs, federation_client, rv)
    await remote.setup()
    msgs = [remote.dag.message(remote.alice, str(i)) for i in range(3)]
    body = {"origin": REMOTE, "origin_server_ts": 1, "pdus": [dict(m.pdu) for m in msgs]}
    status, answer = await remote.request("PUT", "/_matrix/federation/v1/send/t1", body)
    assert status == 200, answer
    assert answer == {"pdus": {m.event_id: {} for m in msgs}}
    assert await remote.request("PUT", "/_matrix/federation/v1/send/t1", body) == (200, answer)

    room = quote(remote.dag.room_id, safe="")
    last = quote(msgs[-1].event_id, safe="")
    status, got = await remote.request("GET", f"/_matrix/federation/v1/event/{last}")
    assert status == 200, got
    assert got["pdus"][0]["content"]["body"] == "2"

    status, ids = await remote.request(
        "GET", f"/_matrix/federation/v1/state_ids/{room}?event_id={last}"
    )
    assert status == 200, ids
    assert set(ids["pdu_ids"]) == set(remote.dag.state_before(msgs[-1]).values())

    status, back = await remote.request(
        "GET", f"/_matrix/federation/v1/backfill/{room}?v={last}&limit=2"
    )
    assert status == 200 and len(back["pdus"]) == 2

    status, missing = await remote.request(
        "POST",
        f"/_matrix/federation/v1/get_missing_events/{room}",
        {"earliest_events": [msgs[0].event_id], "latest_events": [msgs[2].event_id], "limit": 5},
    )
    assert status == 200 and len(missing["events"]) == 1

    status, chain = await remote.request("GET", f"/_matrix/federation/v1/event_auth/{room}/{last}")
    assert status == 200 and chain["auth_chain"]


async def test_bad_requests(hs: Harness, federation_client: TestClient) -> None:
    remote = Remote(hs, federation_client, "10")
    await remote.setup()
    room = quote(remote.dag.room_id, safe="")
    status, err = await remote.request(
        "PUT", "/_matrix/federation/v1/send/t", {"pdus": []}, signed=False
    )
    assert status == 401 and err["errcode"] == "M_UNAUTHORIZED"
    status, err = await remote.request("PUT", "/_matrix/federation/v1/send/t", {"pdus": [{}] * 51})
    assert status == 400
    status, err = await remote.request("GET", f"/_matrix/federation/v1/state_ids/{room}")
    assert status == 400 and err["errcode"] == "M_MISSING_PARAM"
    status, err = await remote.request("GET", f"/_matrix/federation/v1/backfill/{room}?v=$x")
    assert status == 400
    status, err = await remote.request(
        "POST", f"/_matrix/federation/v1/get_missing_events/{room}", {"earliest_events": "x"}
    )
    assert status == 400 and err["errcode"] == "M_BAD_JSON"
    status, err = await remote.request("GET", "/_matrix/federation/v1/event/%24nope")
    assert status == 404
    status, err = await remote.request(
        "GET", "/_matrix/federation/v1/backfill/%21unknown%3Ax?v=%24a&limit=5"
    )
    assert status == 403
    # A server not in the room hears that first, whatever its body holds.
    status, err = await remote.request(
        "POST", "/_matrix/federation/v1/get_missing_events/%21unknown%3Ax", {}
    )
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"


async def test_queries_over_http(hs: Harness, federation_client: TestClient) -> None:
    remote = Remote(hs, federation_client, "10")
    await remote.setup()
    _, token = await hs.register("carol")
    room_id = await hs.create_room(token, room_alias_name="hall")
    alias = quote(f"#hall:{hs.server_name}", safe="")
    status, got = await remote.request(
        "GET", f"/_matrix/federation/v1/query/directory?room_alias={alias}"
    )
    assert status == 200 and got["room_id"] == room_id
    user = quote(f"@carol:{hs.server_name}", safe="")
    status, got = await remote.request(
        "GET", f"/_matrix/federation/v1/query/profile?user_id={user}&field=displayname"
    )
    assert status == 200 and got == {"displayname": "carol"}
    status, _ = await remote.request("GET", "/_matrix/federation/v1/query/profile")
    assert status == 400
