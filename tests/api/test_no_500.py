"""Every Client-Server route answers garbage with a Matrix error, never a 500.

Each registered route is called with path parameters that name nothing, and with bodies
that are not JSON, not objects, or objects of the wrong shape, authenticated and not.
Anything >= 500 is a bug: bad input must get an errcode and a 4xx.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from tests.support.harness import Harness


def is_browser_page(method: str, path: str) -> bool:
    """Pages for a browser, whose errors are HTML pages (as Synapse's): the SSO callback,
    the CAS service URL the CAS server sends the browser back to, the emailed validation
    link (its POST form is the spec's JSON `submit_url`)."""
    return method == "GET" and (
        path.startswith("/_synapse/client/") or path.endswith("/login/cas/ticket")
    )


PLACEHOLDERS = {
    "roomId": "!nope:test.local",
    "roomIdOrAlias": "#nope:test.local",
    "roomAlias": "#nope:test.local",
    "eventId": "$nope",
    "userId": "@nope:test.local",
    "serverName": "test.local",
    "mediaId": "nope",
}
BODIES: list[bytes | None] = [
    None,
    b"{",
    b"[]",
    b'"text"',
    b"{}",
    orjson.dumps(
        {
            "user_id": 5,
            "room_id": ["x"],
            "content": "no",
            "type": {"a": 1},
            "auth": "x",
            "filter": 3,
            "body": None,
            "timeout": "soon",
            "device_keys": [],
            "one_time_keys": "x",
            "messages": {"@nope:test.local": {"*": 3}},
            "rooms": 7,
            "tags": "x",
            "visibility": 9,
            "new_version": 12,
            "presence": 1,
            "displayname": {"x": 1},
            "avatar_url": 5,
        }
    ),
]


def _fill(path: str, values: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1).split(":", 1)[0]
        return values.get(name, "x")

    return re.sub(r"\{([^}]+)\}", sub, path)


def _routes(hs: Harness, values: dict[str, str]) -> list[tuple[str, str]]:
    app = hs.client.server.app
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        if canonical.startswith(("/_matrix", "/_synapse")):
            out.add((route.method, _fill(canonical, values)))
    # Routes that can end the session go last, so the others run authenticated.
    return sorted(out, key=lambda r: (r[1].endswith(("logout", "logout/all", "deactivate")), r))


@pytest.mark.parametrize("real_ids", [False, True], ids=["unknown-ids", "real-ids"])
async def test_no_route_answers_garbage_with_a_500(hs: Harness, real_ids: bool) -> None:
    user_id, token = await hs.register("fuzz")
    values = dict(PLACEHOLDERS)
    if real_ids:
        # Path parameters that name things that exist, so handlers get past their lookups.
        room = await hs.create_room(token, room_alias_name="fuzzroom")
        event_id = await hs.send_message(token, room, "hello")
        values.update(
            roomId=room,
            roomIdOrAlias=room,
            roomAlias="#fuzzroom:test.local",
            eventId=event_id,
            userId=user_id,
        )
    routes = _routes(hs, values)
    assert len(routes) > 100  # the whole API is registered
    failures: list[Any] = []
    for method, path in routes:
        for body in BODIES:
            for tok in (token, None):
                status, resp = await hs.request(method, path, tok, raw=body)
                if status >= 500:
                    failures.append((method, path, body, tok is not None, status, resp))
                elif status >= 400 and is_browser_page(method, path):
                    assert isinstance(resp, bytes) and resp.startswith(b"<!DOCTYPE html>")
                elif status >= 400:
                    # Errors carry an errcode; a user-interactive auth challenge (401 with
                    # flows) is the one 4xx without one.
                    assert isinstance(resp, dict), (method, path, resp)
                    assert "errcode" in resp or (status == 401 and "flows" in resp), (
                        method,
                        path,
                        resp,
                    )
    assert not failures, failures[:10]
    # The session survived until the session-ending routes: the rest ran authenticated.
    assert routes[-1][1].endswith(("logout", "logout/all", "deactivate"))


@pytest.mark.parametrize("query", ["limit=-1", "limit=abc", "from=%00", "dir=z", "timeout=x"])
async def test_bad_query_parameters(hs: Harness, query: str) -> None:
    _, token = await hs.register()
    room = await hs.create_room(token)
    for path in (
        f"/_matrix/client/v3/rooms/{room}/messages",
        "/_matrix/client/v3/sync",
        f"/_matrix/client/v1/rooms/{room}/threads",
        "/_matrix/client/v3/publicRooms",
    ):
        status, resp = await hs.request("GET", f"{path}?{query}", token)
        assert status < 500, (path, query, resp)
