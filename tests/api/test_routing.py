"""The route-table mechanism: paths from versions, and the guard every route runs behind
(authentication by kind, guests, path identifiers, rate limits)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from starling.accounts.auth import Requester
from starling.api.admin.registration import admin_table
from starling.api.client.routes import client_table
from starling.api.client.sso import SsoRoutes, oidc_callback_table
from starling.api.federation.routes import federation_table, keys_table
from starling.api.http import json_response, make_web_app
from starling.api.media import media_tables
from starling.api.routing import (
    Auth,
    Guards,
    RateClass,
    RouteTable,
    get,
    mount,
    optional_requester,
    origin,
    put,
    requester_of,
)
from starling.api.webhooks import webhooks_table
from starling.errors import MatrixError, unknown_token
from starling.ratelimit import RateLimits
from tests.support.harness import make_test_config

USERS = {
    "alice": Requester("@alice:test.local", "D", is_admin=False, access_token="alice"),
    "guest": Requester("@1:test.local", "G", is_admin=False, access_token="guest", is_guest=True),
    "admin": Requester("@root:test.local", "R", is_admin=True, access_token="admin"),
}


class FakeTokens:
    async def requester_for_token(
        self, token: str, user_id: str | None = None, device_id: str | None = None
    ) -> Requester:
        if token not in USERS:
            raise unknown_token()
        return USERS[token]


async def fake_origin(request: web.Request) -> str:
    server = request.headers.get("X-Test-Origin")
    if server is None:
        raise MatrixError(401, "M_UNAUTHORIZED", "Missing X-Matrix")
    return server


async def who(request: web.Request) -> web.Response:
    found = optional_requester(request)
    return json_response({"user_id": found.user_id if found else None})


async def me(request: web.Request) -> web.Response:
    return json_response({"user_id": requester_of(request).user_id, **request.match_info})


async def peer(request: web.Request) -> web.Response:
    return json_response({"origin": origin(request)})


def table() -> RouteTable:
    return RouteTable(
        "test",
        "/_matrix/test/{version}",
        ("v3",),
        [
            get("/open", who, Auth.NONE),
            get("/maybe", who, Auth.OPTIONAL),
            get("/user", me),
            get("/guest", me, guests=True),
            get("/admin", me, Auth.ADMIN),
            get("/peer", peer, Auth.FEDERATION),
            get("/rooms/{roomId}/users/{userId}/events/{eventId}", me),
            put("/late/{roomId}/{eventId}", me, late_parameters=("eventId",)),
            put("/send", me, rate_limit=RateClass.MESSAGE),
            get("/old", who, Auth.NONE, versions=("r0", "unstable/org.example.msc1")),
        ],
    )


@pytest.fixture
async def client(tmp_path: Path) -> Any:
    config = make_test_config(tmp_path, rc_message={"per_second": 0.001, "burst_count": 2})
    app = make_web_app(1024)
    mount(app, table(), Guards(FakeTokens(), RateLimits(config), fake_origin))
    async with TestClient(TestServer(app)) as c:
        yield c


async def call(client: Any, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with client.request(method, "/_matrix/test" + path, headers=headers, **kw) as resp:
        return resp.status, await resp.json()


def test_paths_expand_the_versions_and_unstable_aliases() -> None:
    paths = [p for _, p, _ in table().endpoints()]
    assert "/_matrix/test/v3/open" in paths
    assert "/_matrix/test/r0/old" in paths
    assert "/_matrix/test/unstable/org.example.msc1/old" in paths
    assert "/_matrix/test/v3/old" not in paths


async def test_auth_kinds(client: Any) -> None:
    assert await call(client, "GET", "/v3/open", "nonsense") == (200, {"user_id": None})
    assert await call(client, "GET", "/v3/maybe") == (200, {"user_id": None})
    assert await call(client, "GET", "/v3/maybe", "alice") == (
        200,
        {"user_id": USERS["alice"].user_id},
    )
    status, body = await call(client, "GET", "/v3/maybe", "nonsense")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = await call(client, "GET", "/v3/user")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await call(client, "GET", "/v3/user", headers={"Authorization": "Basic x"})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    assert (await call(client, "GET", "/v3/user", "alice"))[0] == 200
    assert (await call(client, "GET", "/v3/user?access_token=alice"))[0] == 200
    status, body = await call(client, "GET", "/v3/admin", "alice")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    assert (await call(client, "GET", "/v3/admin", "admin"))[0] == 200


async def test_guests_only_where_allowed(client: Any) -> None:
    status, body = await call(client, "GET", "/v3/user", "guest")
    assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    status, body = await call(client, "GET", "/v3/admin", "guest")
    assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
    assert await call(client, "GET", "/v3/guest", "guest") == (200, {"user_id": "@1:test.local"})


async def test_federation_origin(client: Any) -> None:
    status, body = await call(client, "GET", "/v3/peer")
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    status, body = await call(client, "GET", "/v3/peer", headers={"X-Test-Origin": "other.example"})
    assert (status, body) == (200, {"origin": "other.example"})


@pytest.mark.parametrize(
    "room,user,event",
    [
        ("nope", "@bob:test.local", "$e"),
        ("!room", "@bob:test.local", "$e"),
        ("!" + "r" * 300 + ":test.local", "@bob:test.local", "$e"),
        ("!room:test.local", "bob", "$e"),
        ("!room:test.local", "@bob", "$e"),
        ("!room:test.local", "@bob:test.local", "e"),
        ("!room:test.local", "@bob:test.local", "$" + "e" * 300),
    ],
)
async def test_identifiers_in_the_path_are_checked(
    client: Any, room: str, user: str, event: str
) -> None:
    status, body = await call(
        client, "GET", f"/v3/rooms/{room}/users/{user}/events/{event}", "alice"
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_good_identifiers_reach_the_handler(client: Any) -> None:
    room = "!room:test.local"
    event = "$" + "A" * 43
    status, body = await call(
        client, "GET", f"/v3/rooms/{room}/users/@bob:test.local/events/{event}", "alice"
    )
    assert status == 200
    assert (body["roomId"], body["userId"], body["eventId"]) == (room, "@bob:test.local", event)


async def test_late_parameters_are_left_to_the_handler(client: Any) -> None:
    status, body = await call(client, "PUT", "/v3/late/!room:test.local/xxx", "alice", json={})
    assert (status, body["eventId"]) == (200, "xxx")
    status, body = await call(client, "PUT", "/v3/late/nope/xxx", "alice", json={})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")  # the others still are


async def test_authentication_comes_before_the_path_check(client: Any) -> None:
    status, body = await call(client, "GET", "/v3/rooms/nope/users/x/events/y")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_rate_limit_is_spent_per_requester(client: Any) -> None:
    assert (await call(client, "PUT", "/v3/send", "alice"))[0] == 200
    assert (await call(client, "PUT", "/v3/send", "alice"))[0] == 200
    status, body = await call(client, "PUT", "/v3/send", "alice")
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert (await call(client, "PUT", "/v3/send", "admin"))[0] == 200


def test_a_route_needing_a_missing_guard_fails_at_mount() -> None:
    app = make_web_app(1024)
    with pytest.raises(ValueError, match="origin authenticator"):
        mount(app, table(), Guards(FakeTokens(), None, None))


def _served_tables() -> list[RouteTable]:
    services = MagicMock()
    services.config.default_room_version = "10"
    return [
        client_table(services),
        admin_table(services),
        *media_tables(services),
        federation_table(services),
        keys_table(services),
        webhooks_table(services.incoming_webhooks),
        oidc_callback_table(SsoRoutes(services.sso, False)),
    ]


def test_every_handler_names_its_endpoint_and_links_the_spec() -> None:
    undocumented = []
    for table in _served_tables():
        for method, path, route in table.endpoints():
            handler = route.handler
            text = (inspect.getcomments(handler) or "") + (inspect.getdoc(handler) or "")
            if f"{method} /_" not in text or not re.search(r"\((spec: |Synapse )", text):
                undocumented.append(f"{method} {path}")
    assert not undocumented, undocumented
