"""Slow and abusive clients at the HTTP edge: slowloris headers, bodies trickled byte by
byte and many connections from one address are cut off with a Matrix error, while a
normal client is served meanwhile. Deadlines are short here (about a second) but every
wait for the server has a generous timeout: nothing is asserted about speed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from starling.api.connection_guard import ConnectionLimits, GuardedAppRunner, PeerCounter
from starling.api.http import json_response, make_web_app, read_json_object
from starling.config import ConfigError, load_config_dict

HANG = 20.0  # seconds: only to turn a hang into a failure


async def _echo(request: web.Request) -> web.Response:
    return json_response({"got": await read_json_object(request)})


async def _hello(request: web.Request) -> web.Response:
    return json_response({"hello": "world"})


@asynccontextmanager
async def _server(limits: ConnectionLimits, *, capped: bool = True) -> AsyncIterator[int]:
    app = make_web_app(1024 * 1024)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/hello", _hello)
    runner = GuardedAppRunner(app, limits, PeerCounter() if capped else None, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), HANG)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    """One response (status, JSON body) from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    body = await asyncio.wait_for(reader.readexactly(length), HANG)
    return status, orjson.loads(body)


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF or reset), waiting generously."""
    try:
        rest = await asyncio.wait_for(reader.read(), HANG)
    except ConnectionResetError:
        return True
    return rest == b""


async def _normal_request(port: int) -> tuple[int, dict[str, object]]:
    reader, writer = await _connect(port)
    try:
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await _read_response(reader)
    finally:
        writer.close()


async def _trickle(writer: asyncio.StreamWriter, data: bytes, stop: asyncio.Event) -> None:
    """Send `data` one byte at a time, 0.1 s apart, until done, stopped or cut off."""
    for i in range(len(data)):
        if stop.is_set():
            return
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(0.1)


async def test_slowloris_headers_cut_off_while_others_are_served() -> None:
    async with _server(ConnectionLimits(header_timeout=1.0)) as port:
        reader, writer = await _connect(port)
        stop = asyncio.Event()
        slow = b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
        trickling = asyncio.create_task(_trickle(writer, slow, stop))
        try:
            # Meanwhile, a normal client is served (more than once).
            for _ in range(3):
                assert await _normal_request(port) == (200, {"hello": "world"})
            status, body = await _read_response(reader)
            assert status == 408
            assert body["errcode"] == "M_UNKNOWN"
            assert await _closed(reader)
        finally:
            stop.set()
            await trickling
            writer.close()


async def test_silent_connection_cut_off() -> None:
    async with _server(ConnectionLimits(header_timeout=1.0)) as port:
        reader, writer = await _connect(port)
        status, body = await _read_response(reader)
        assert (status, body["errcode"]) == (408, "M_UNKNOWN")
        assert await _closed(reader)
        writer.close()


async def test_slow_headers_on_a_kept_alive_connection_cut_off() -> None:
    async with _server(ConnectionLimits(header_timeout=1.0)) as port:
        reader, writer = await _connect(port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _read_response(reader) == (200, {"hello": "world"})
        stop = asyncio.Event()
        trickling = asyncio.create_task(
            _trickle(writer, b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"b" * 400, stop)
        )
        try:
            status, _ = await _read_response(reader)
            assert status == 408
            assert await _closed(reader)
        finally:
            stop.set()
            await trickling
            writer.close()


async def test_trickled_body_cut_off_while_others_are_served() -> None:
    async with _server(ConnectionLimits(header_timeout=5.0, body_timeout=1.0)) as port:
        reader, writer = await _connect(port)
        body = b'{"a": "' + b"x" * 400 + b'"}'
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        stop = asyncio.Event()
        trickling = asyncio.create_task(_trickle(writer, body, stop))
        try:
            for _ in range(3):
                assert await _normal_request(port) == (200, {"hello": "world"})
            status, answer = await _read_response(reader)
            assert (status, answer["errcode"]) == (408, "M_UNKNOWN")
            assert await _closed(reader)
        finally:
            stop.set()
            await trickling
            writer.close()


async def test_body_in_time_is_served() -> None:
    async with _server(ConnectionLimits(header_timeout=5.0, body_timeout=10.0)) as port:
        reader, writer = await _connect(port)
        body = b'{"a": 1}'
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:3]
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(body[3:])
        assert await _read_response(reader) == (200, {"got": {"a": 1}})
        # Kept alive: a second request on the same connection works too.
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert await _read_response(reader) == (200, {"hello": "world"})
        writer.close()


async def test_connections_per_address_capped() -> None:
    async with _server(ConnectionLimits(max_connections_per_ip=3)) as port:
        held = [await _connect(port) for _ in range(3)]
        reader, writer = await _connect(port)
        status, body = await _read_response(reader)
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert await _closed(reader)
        writer.close()
        # The held connections still work; once one closes, a new one is accepted.
        r0, w0 = held[0]
        w0.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert await _read_response(r0) == (200, {"hello": "world"})
        assert await _closed(r0)
        w0.close()
        for _ in range(100):  # the server sees the close soon after the client
            status, _ = await _normal_request(port)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        for _, w in held[1:]:
            w.close()


async def test_no_cap_without_a_peer_counter() -> None:
    """Listeners behind a proxy (x_forwarded) get no per-address cap."""
    async with _server(ConnectionLimits(max_connections_per_ip=1), capped=False) as port:
        held = [await _connect(port) for _ in range(3)]
        assert await _normal_request(port) == (200, {"hello": "world"})
        for _, w in held:
            w.close()


@pytest.mark.parametrize(
    "limits",
    [
        {"header_timeout": 0},
        {"body_timeout": -1},
        {"keepalive_timeout": 100000},
        {"max_connections_per_ip": -1},
    ],
)
def test_bad_limits_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="http_limits"):
        load_config_dict({"server_name": "example.org", "http_limits": limits})
