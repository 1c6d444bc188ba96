"""The federation endpoints of media, OpenID, /timestamp_to_event and /hierarchy with
garbage, from a server in the room: a Matrix error every time, never a 500; unsigned or
wrongly signed requests refused where a signature is required."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from starling.app import build_listener_app
from starling.config import Listener, ListenerResource
from tests.federation.test_endpoints import Remote
from tests.support.harness import Harness


@pytest.fixture
async def federation_client(hs: Harness) -> AsyncIterator[TestClient]:
    listener = Listener(port=0, resources=[ListenerResource(names=["federation"])])
    async with TestClient(TestServer(build_listener_app(hs.services, listener))) as client:
        yield client


async def test_garbage_gets_matrix_errors(hs: Harness, federation_client: TestClient) -> None:
    remote = Remote(hs, federation_client, "10")
    await remote.setup()
    room = quote(remote.dag.room_id, safe="")
    v1 = "/_matrix/federation/v1"
    cases = [
        f"{v1}/media/download/..%2F..%2Fetc",
        f"{v1}/media/download/{'x' * 300}",
        f"{v1}/media/download/unknown?timeout_ms=abc",
        f"{v1}/media/download/unknown?timeout_ms=-1",
        f"{v1}/media/thumbnail/unknown",
        f"{v1}/media/thumbnail/unknown?width=a&height=1",
        f"{v1}/media/thumbnail/unknown?width=99999999999999999999&height=1",
        f"{v1}/media/thumbnail/unknown?width=5&height=5&method=stretch",
        f"{v1}/timestamp_to_event/{room}",
        f"{v1}/timestamp_to_event/{room}?ts=1",
        f"{v1}/timestamp_to_event/{room}?ts=x&dir=f",
        f"{v1}/timestamp_to_event/{room}?ts=99999999999999999999999&dir=b",
        f"{v1}/timestamp_to_event/not-a-room?ts=1&dir=f",
        f"{v1}/timestamp_to_event/{quote('!unknown:remote.example')}?ts=1&dir=f",
        f"{v1}/hierarchy/not-a-room",
        f"{v1}/hierarchy/{quote('!unknown:remote.example')}",
        f"{v1}/hierarchy/{room}?suggested_only=maybe",
        f"{v1}/openid/userinfo?access_token=",
        f"{v1}/openid/userinfo?access_token={'x' * 2000}",
    ]
    for path in cases:
        status, body = await remote.request("GET", path)
        assert 400 <= status < 500, (path, status, body)
        assert isinstance(body, dict) and body.get("errcode", "").startswith("M_"), (path, body)
    # The room's own endpoints answer a server in it.
    status, body = await remote.request("GET", f"{v1}/timestamp_to_event/{room}?ts=0&dir=f")
    assert status == 200 and body["event_id"].startswith("$"), body
    # remote.example's user is joined: it may see the room (not a space: no children).
    status, body = await remote.request("GET", f"{v1}/hierarchy/{room}")
    assert status == 200 and body["room"]["room_id"] == remote.dag.room_id, body
    assert body["children"] == [] and body["inaccessible_children"] == []
    # Without a signature (or signed by someone else's name): refused.
    for path in (f"{v1}/media/download/x", f"{v1}/timestamp_to_event/{room}?ts=0&dir=f"):
        status, body = await remote.request("GET", path, signed=False)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), path
        status, body = await remote.request("GET", path, origin="other.example")
        assert status == 401, (path, body)
