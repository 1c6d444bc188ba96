"""OpenID tokens: requested by a user through the client API, exchanged by a third party
at the federation userinfo endpoint (unsigned), for that user's ID only, until they
expire; never usable as an access token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from starling.app import build_listener_app
from starling.config import Listener, ListenerResource
from tests.support.harness import Harness

USERINFO = "/_matrix/federation/v1/openid/userinfo"


@pytest.fixture
async def federation(hs: Harness) -> AsyncIterator[TestClient[object, object]]:
    listener = Listener(port=0, resources=[ListenerResource(names=["federation"])])
    async with TestClient(TestServer(build_listener_app(hs.services, listener))) as client:
        yield client


async def userinfo(
    client: TestClient[object, object], token: str | None, *, header: bool = False
) -> tuple[int, dict[str, object]]:
    params = {} if token is None or header else {"access_token": token}
    headers = {"Authorization": f"Bearer {token}"} if header else {}
    async with client.get(USERINFO, params=params, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_request_and_exchange(hs: Harness, federation: TestClient[object, object]) -> None:
    alice, token = await hs.register()
    bob, _ = await hs.register()
    path = f"/_matrix/client/v3/user/{alice}/openid/request_token"
    status, body = await hs.request("POST", path, token, {})
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["matrix_server_name"] == hs.server_name
    openid = body["access_token"]
    assert (await userinfo(federation, openid)) == (200, {"sub": alice})
    assert (await userinfo(federation, openid, header=True)) == (200, {"sub": alice})
    # Each request hands out a new token.
    status, again = await hs.request("POST", path, token, {})
    assert status == 200 and again["access_token"] != openid

    # Not for someone else; not without a body that is an object; not without a login.
    status, body = await hs.request(
        "POST", f"/_matrix/client/v3/user/{bob}/openid/request_token", token, {}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await hs.request("POST", path, token, raw=b"[1]")
    assert status == 400 and body["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")
    status, body = await hs.request("POST", path, None, {})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")

    # An OpenID token is not an access token.
    status, body = await hs.request("GET", "/_matrix/client/v3/account/whoami", openid)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_bad_missing_and_expired_tokens(
    hs: Harness, federation: TestClient[object, object]
) -> None:
    status, body = await userinfo(federation, None)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    for bad in ("an/invalid/token", "x" * 5000, "\u00e9"):
        status, body = await userinfo(federation, bad)
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    alice, _ = await hs.register()
    tokens = hs.services.openid
    answer = await tokens.request_token(alice, alice)
    real_clock = tokens._clock
    try:
        tokens._clock = lambda: real_clock() + 3601
        status, body = await userinfo(federation, answer["access_token"])
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    finally:
        tokens._clock = real_clock
    assert (await userinfo(federation, answer["access_token"])) == (200, {"sub": alice})


async def test_openid_listener_resource(hs: Harness) -> None:
    """Synapse's `openid` resource: userinfo on a port serving no other federation API."""
    listener = Listener(port=0, resources=[ListenerResource(names=["client", "openid"])])
    alice, _ = await hs.register()
    answer = await hs.services.openid.request_token(alice, alice)
    async with TestClient(TestServer(build_listener_app(hs.services, listener))) as client:
        assert (await userinfo(client, answer["access_token"])) == (200, {"sub": alice})
        async with client.get("/_matrix/federation/v1/version") as resp:
            assert resp.status == 404 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"
