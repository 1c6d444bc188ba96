"""Request lines and headers beyond the limits: Matrix errors (JSON), not aiohttp's text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from starling.api.connection_guard import ConnectionLimits, GuardedAppRunner
from starling.api.http_server import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES, MatrixAppRunner
from tests.support.harness import Harness


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture(params=["plain", "guarded"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A listener on the plain runner (tests) and on the one `starling serve` uses."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    runner: web.AppRunner
    if request.param == "plain":
        runner = MatrixAppRunner(app, access_log=None)
    else:
        runner = GuardedAppRunner(app, ConnectionLimits(), None, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


async def _error(port: int, request: bytes) -> tuple[int, str]:
    status, headers, body = await _raw(port, request)
    assert headers["content-type"].startswith("application/json"), (status, body[:200])
    return status, orjson.loads(body)["errcode"]


async def test_long_path_is_414(port: int) -> None:
    path = b"/_matrix/client/v3/rooms/!" + b"a" * (MAX_LINE_BYTES + 100) + b":x/state"
    got = await _error(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == (414, "M_TOO_LARGE")


async def test_long_header_is_431(port: int) -> None:
    token = b"t" * (MAX_FIELD_BYTES + 100)
    request = b"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
    assert await _error(port, request) == (431, "M_TOO_LARGE")


async def test_too_many_headers_is_431(port: int) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    assert await _error(port, b"GET /a HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n") == (
        431,
        "M_TOO_LARGE",
    )


async def test_garbage_is_a_matrix_error(port: int) -> None:
    assert await _error(port, b"\x16\x03\x01garbage\r\n\r\n") == (400, "M_UNRECOGNIZED")


async def test_a_10_kB_room_id_and_path_within_limits_are_served(port: int) -> None:
    path = b"/_matrix/client/v3/rooms/!" + b"a" * 10_000 + b":x/state"
    status, _, body = await _raw(
        port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and orjson.loads(body) == {"ok": True}


async def test_10_kB_room_id_and_token_get_matrix_errors(hs: Harness) -> None:
    _, tok = await hs.register()
    status, resp = await hs.request(
        "GET", "/_matrix/client/v3/rooms/!" + "a" * 10_000 + ":test.local/state", tok
    )
    assert status in (400, 403, 404) and "errcode" in resp, resp
    status, resp = await hs.request("GET", "/_matrix/client/v3/account/whoami", "t" * 10_000)
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
