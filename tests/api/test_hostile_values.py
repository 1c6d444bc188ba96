"""Hostile scalar values in every path and query parameter: a Matrix 4xx, never a 500.

The numbers that broke things: integers beyond 64 bits (the database cannot hold them),
digits Python's int() reads but no client means ("²", "٣"), exponent and signed forms,
and control characters. test_no_500 covers bodies; this walks parameters.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.api.test_no_500 import PLACEHOLDERS, _routes, is_browser_page
from tests.support.harness import Harness

HOSTILE = ["9999999999999999999", "-9999999999999999999", "²", "٣", "1e3", " 1", "\x00"]
QUERY_PARAMS = [
    "limit",
    "timeout",
    "since",
    "from",
    "to",
    "at",
    "version",
    "filter",
    "ts",
    "max_depth",
    "width",
    "height",
    "timeout_ms",
    "dir",
    "membership",
    "not_membership",
    "server_name",
    "via",
    "recurse",
    "include",
    "url",
    "search_term",
]


async def _setup(hs: Harness) -> tuple[str, dict[str, str]]:
    user_id, token = await hs.register("hostile")
    room = await hs.create_room(token, room_alias_name="hostileroom")
    event_id = await hs.send_message(token, room, "hello")
    status, resp = await hs.request(
        "POST",
        "/_matrix/client/v3/room_keys/version",
        token,
        {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "x"}},
    )
    assert status == 200, resp
    values = dict(PLACEHOLDERS)
    values.update(roomId=room, roomIdOrAlias=room, eventId=event_id, userId=user_id, version="1")
    return token, values


# A path naming another server (remote media) may truly be unreachable: 502 with a Matrix
# error is Synapse's answer and the right one. Any other 5xx is a bug of ours.
_UPSTREAM_FAILURE = 502


def _check(failures: list[Any], what: Any, status: int, resp: Any) -> None:
    is_error = isinstance(resp, dict) and "errcode" in resp
    if isinstance(resp, bytes) and is_browser_page(str(what[0]), str(what[1])):
        is_error = resp.startswith(b"<!DOCTYPE html>")
    if status == _UPSTREAM_FAILURE and is_error:
        return
    if status >= 500 or (status >= 400 and not is_error):
        failures.append((what, status, resp))


async def test_hostile_query_values(hs: Harness) -> None:
    token, values = await _setup(hs)
    routes = [
        (m, p)
        for m, p in _routes(hs, values)
        if m == "GET" and "logout" not in p and "deactivate" not in p
    ]
    failures: list[Any] = []
    for method, path in routes:
        for name in QUERY_PARAMS:
            for value in HOSTILE:
                query = f"{name}={quote(value)}"
                status, resp = await hs.request(method, f"{path}?{query}", token)
                _check(failures, (method, path, query), status, resp)
    assert not failures, failures[:10]


async def test_hostile_path_values(hs: Harness) -> None:
    token, values = await _setup(hs)
    failures: list[Any] = []
    for name in values:
        for value in HOSTILE:
            mutated = {**values, name: quote(value, safe="")}
            for method, path in _routes(hs, mutated):
                if "logout" in path or "deactivate" in path or method not in ("GET", "PUT"):
                    continue
                status, resp = await hs.request(method, path, token, raw=b"{}")
                _check(failures, (method, path), status, resp)
    assert not failures, failures[:10]


@pytest.mark.parametrize(
    "query", ["from=t9999999999999999999", "from=t-9999999999999999999", "to=t99999999999999999999"]
)
async def test_pagination_tokens_beyond_64_bits(hs: Harness, query: str) -> None:
    _, token = await hs.register()
    room = await hs.create_room(token)
    status, resp = await hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&{query}", token
    )
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM", resp


async def test_backup_version_of_unicode_digits_is_not_found(hs: Harness) -> None:
    _, token = await hs.register()
    status, resp = await hs.request("GET", "/_matrix/client/v3/room_keys/version/%C2%B2", token)
    assert status == 404 and resp["errcode"] == "M_NOT_FOUND", resp


@pytest.mark.parametrize("big", ["9999999999999999999", "99999999999999999999999", "²"])
async def test_tokens_with_huge_positions_in_every_pair(hs: Harness, big: str) -> None:
    _, token = await hs.register()
    room = await hs.create_room(token)
    event_id = await hs.send_message(token, room, "hi")
    paths = [
        f"/_matrix/client/v3/keys/changes?from=s{big}&to=s1",
        f"/_matrix/client/v3/keys/changes?from=s1&to=s{big}",
        f"/_matrix/client/v3/sync?since=s{big}",
        f"/_matrix/client/v3/sync?since=s1~receipts.{big}",
        f"/_matrix/client/v3/rooms/{room}/messages?dir=f&from=t1&to=t{big}",
        f"/_matrix/client/v3/rooms/{room}/members?at=t{big}",
        f"/_matrix/client/v3/rooms/{room}/members?at=s{big}",
        f"/_matrix/client/v1/rooms/{room}/relations/{event_id}?from={big}",
        f"/_matrix/client/v1/rooms/{room}/relations/{event_id}?from=t{big}",
        f"/_matrix/client/v1/rooms/{room}/threads?from={big}",
        f"/_matrix/client/v1/rooms/{room}/threads?from=t{big}",
        f"/_matrix/client/v1/rooms/{room}/hierarchy?from={big}",
        f"/_matrix/client/v3/notifications?from={big}",
        f"/_matrix/client/v3/publicRooms?since=n{big}_!x:test.local",
        f"/_matrix/client/v3/rooms/{room}/context/{event_id}?limit={big}",
        f"/_matrix/client/v3/rooms/{room}/initialSync?limit={big}",
        f"/_matrix/client/v3/events?from=s{big}",
    ]
    for path in paths:
        status, resp = await hs.request("GET", path, token)
        assert status < 500 and (status < 400 or "errcode" in resp), (path, status, resp)
    status, resp = await hs.request(
        "POST",
        f"/_matrix/client/v3/search?next_batch=k{big}",
        token,
        {"search_categories": {"room_events": {"search_term": "hi"}}},
    )
    assert status < 500, resp
