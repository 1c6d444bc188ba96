"""FederationClient against a local HTTPS server: X-Matrix signing with destination, Host
header, certificate verification (custom CA, whitelist), IP range rules at connect time,
domain whitelist, error mapping and response limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from starling import metrics
from starling.federation.client import OUTBOUND_REQUESTS, FederationClient, federation_path
from starling.federation.errors import FederationDenied, FederationError, FederationUnreachable
from starling.federation.ip_ranges import IPRangePolicy
from starling.protocol.signing import SigningKey
from starling.protocol.x_matrix import parse_header, verify_request
from tests.federation.tls_servers import client_config, pki_for, tls_app
from tests.support.offline_dns import TableHostResolver, TableSrvResolver

ORIGIN = "origin.test"


class Recorder:
    def __init__(self, key: SigningKey, port_holder: list[int]) -> None:
        self.key = key
        self.port_holder = port_holder
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        content = orjson.loads(raw) if raw else None
        auth = parse_header(request.headers["Authorization"])
        destination = request.headers["Host"]
        verify_request(
            auth,
            self.key.verify_key,
            method=request.method,
            uri=request.raw_path,
            our_server_name=destination,
            content=content,
        )
        self.seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "host": destination,
                "origin": auth.origin,
                "destination": auth.destination,
                "content": content,
            }
        )
        return web.json_response({"ok": True, "echo": content})


def make_client(tmp_path: Path, key: SigningKey, **config: Any) -> FederationClient:
    return FederationClient(
        client_config(tmp_path, **config),
        key,
        srv_resolver=TableSrvResolver(),
        host_resolver=TableHostResolver({"localhost": "127.0.0.1", "remote.test": "127.0.0.1"}),
    )


def recording_app(recorder: Recorder) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/_matrix/{tail:.*}", recorder.handle)
    return app


async def test_signed_requests_verify_at_the_destination(tmp_path: Path) -> None:
    pki = pki_for(tmp_path, ("localhost", "remote.test"))
    key = SigningKey.generate()
    recorder = Recorder(key, [])
    async with tls_app(recording_app(recorder), pki) as port:
        client = make_client(
            tmp_path, key, ip_range_blacklist=[], federation_custom_ca_list=[str(pki.ca_cert)]
        )
        destination = f"remote.test:{port}"
        try:
            event_id = "$ab/c+d:x?y"
            got = await client.get_json(
                destination,
                federation_path("/_matrix/federation/v1/event/{}", event_id),
                {"limit": 5, "v": ["a b", "c&d"]},
            )
            assert got == {"ok": True, "echo": None}
            got = await client.put_json(
                destination, "/_matrix/federation/v1/send/1", {"pdus": [], "big": 1.5}
            )
            assert got["echo"] == {"pdus": [], "big": 1.5}
            await client.post_json(destination, "/_matrix/key/v2/query", {"server_keys": {}})
        finally:
            await client.close()
    get, put, post = recorder.seen
    assert get["raw_path"] == (
        "/_matrix/federation/v1/event/%24ab%2Fc%2Bd%3Ax%3Fy?limit=5&v=a%20b&v=c%26d"
    )
    assert get["host"] == destination  # Host: the server name, with its port
    assert (get["origin"], get["destination"]) == (ORIGIN, destination)
    assert put["method"] == "PUT" and post["method"] == "POST"


async def test_ipv6_literal_destination(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)
    key = SigningKey.generate()
    recorder = Recorder(key, [])
    async with tls_app(recording_app(recorder), pki, host="::1") as port:
        client = make_client(
            tmp_path, key, ip_range_blacklist=[], federation_custom_ca_list=[str(pki.ca_cert)]
        )
        try:
            # The certificate names ::1 as an IP address: checked, without SNI.
            assert (await client.get_json(f"[::1]:{port}", "/_matrix/x", {"a": "b"}))["ok"]
        finally:
            await client.close()
    (seen,) = recorder.seen
    assert seen["host"] == f"[::1]:{port}" and seen["raw_path"] == "/_matrix/x?a=b"


async def test_certificate_verification(tmp_path: Path) -> None:
    pki = pki_for(tmp_path, ("localhost",))
    key = SigningKey.generate()
    async with tls_app(recording_app(Recorder(key, [])), pki) as port:
        # Default: the system's CAs; the test CA is unknown → no request is sent.
        client = make_client(tmp_path, key, ip_range_blacklist=[])
        try:
            with pytest.raises(FederationUnreachable, match="certificate"):
                await client.get_json(f"localhost:{port}", "/_matrix/federation/v1/version")
        finally:
            await client.close()
        # The certificate is for localhost, not remote.test, even with the CA trusted.
        client = make_client(
            tmp_path, key, ip_range_blacklist=[], federation_custom_ca_list=[str(pki.ca_cert)]
        )
        try:
            with pytest.raises(FederationUnreachable):
                await client.get_json(f"remote.test:{port}", "/_matrix/federation/v1/version")
            assert await client.get_json(f"localhost:{port}", "/_matrix/x") == {
                "ok": True,
                "echo": None,
            }
        finally:
            await client.close()
        # Whitelisted name, or verification off: accepted without a trusted chain.
        for config in (
            {"federation_certificate_verification_whitelist": ["remote.*"]},
            {"federation_verify_certificates": False},
        ):
            client = make_client(tmp_path, key, ip_range_blacklist=[], **config)
            try:
                assert (await client.get_json(f"remote.test:{port}", "/_matrix/x"))["ok"]
            finally:
                await client.close()


async def test_ip_ranges_are_checked_when_connecting(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)
    key = SigningKey.generate()
    recorder = Recorder(key, [])
    async with tls_app(recording_app(recorder), pki) as port:
        # Default blacklist: loopback refused, for IP literals and for names alike.
        client = make_client(tmp_path, key, federation_verify_certificates=False)
        try:
            for destination in (f"127.0.0.1:{port}", f"localhost:{port}", f"remote.test:{port}"):
                with pytest.raises(FederationUnreachable, match="ip_range_blacklist"):
                    await client.get_json(destination, "/_matrix/x")
        finally:
            await client.close()
        assert recorder.seen == []
        # The whitelist overrides the blacklist.
        client = make_client(
            tmp_path,
            key,
            federation_verify_certificates=False,
            ip_range_whitelist=["127.0.0.1/32"],
        )
        try:
            assert (await client.get_json(f"127.0.0.1:{port}", "/_matrix/x"))["ok"]
        finally:
            await client.close()
        # An admin's own blacklist applies too.
        client = make_client(
            tmp_path,
            key,
            federation_verify_certificates=False,
            ip_range_blacklist=["127.0.0.0/30"],
        )
        try:
            with pytest.raises(FederationUnreachable, match="ip_range_blacklist"):
                await client.get_json(f"127.0.0.1:{port}", "/_matrix/x")
        finally:
            await client.close()


def test_ip_range_policy() -> None:
    from starling.config import DEFAULT_IP_RANGE_BLACKLIST

    policy = IPRangePolicy(DEFAULT_IP_RANGE_BLACKLIST, ["10.1.0.0/16"])
    for refused in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "::1", "fe80::1", "::ffff:127.0.0.1"):
        assert not policy.is_allowed(refused), refused
    for allowed in ("8.8.8.8", "2a00:1450::1", "10.1.2.3", "::ffff:8.8.8.8"):
        assert policy.is_allowed(allowed), allowed
    open_policy = IPRangePolicy([])
    assert open_policy.is_allowed("127.0.0.1") and open_policy.is_allowed("::1")
    assert not open_policy.is_allowed("0.0.0.0") and not open_policy.is_allowed("::")
    assert not open_policy.is_allowed("not an address")


async def test_domain_whitelist_and_self(tmp_path: Path) -> None:
    client = make_client(tmp_path, SigningKey.generate(), federation_domain_whitelist=["ok.test"])
    try:
        with pytest.raises(FederationDenied, match="whitelist"):
            await client.get_json("other.test", "/_matrix/x")
        with pytest.raises(FederationDenied):
            await client.get_json(ORIGIN, "/_matrix/x")
        assert client.is_destination_allowed("ok.test")
    finally:
        await client.close()


async def test_errors_and_limits(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such event"}, status=404)

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>", status=200)

    async def big(request: web.Request) -> web.Response:
        return web.json_response({"x": "y" * 5000})

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200 + b"]" * 200, content_type="application/json")

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(text="upstream down", status=502)

    app = web.Application()
    for path, handler in (
        ("/_matrix/nf", not_found),
        ("/_matrix/html", html),
        ("/_matrix/big", big),
        ("/_matrix/deep", deep),
        ("/_matrix/502", bad_gateway),
    ):
        app.router.add_get(path, handler)
    async with tls_app(app, pki) as port:
        client = make_client(
            tmp_path,
            SigningKey.generate(),
            ip_range_blacklist=[],
            federation_verify_certificates=False,
        )
        d = f"localhost:{port}"
        metrics.enable()  # as serving /metrics does (enable_metrics)
        not_found_before = OUTBOUND_REQUESTS.labels("GET", "4xx")._value.get()
        try:
            with pytest.raises(FederationError) as e:
                await client.get_json(d, "/_matrix/nf")
            assert OUTBOUND_REQUESTS.labels("GET", "4xx")._value.get() == not_found_before + 1
            assert (e.value.status, e.value.errcode, e.value.message) == (
                404,
                "M_NOT_FOUND",
                "no such event",
            )
            with pytest.raises(FederationError, match="without JSON"):
                await client.get_json(d, "/_matrix/html")
            with pytest.raises(FederationError, match="larger than"):
                await client.get_json(d, "/_matrix/big", max_size=1000)
            assert (await client.get_json(d, "/_matrix/big"))["x"]
            with pytest.raises(FederationError, match="nested"):
                await client.get_json(d, "/_matrix/deep")
            with pytest.raises(FederationError) as e:
                await client.get_json(d, "/_matrix/502")
            assert (e.value.status, e.value.errcode) == (502, None)
            with pytest.raises(ValueError):
                await client.get_json(d, "relative/path")
        finally:
            await client.close()


async def test_unreachable(tmp_path: Path) -> None:
    from tests.federation.harness import free_port

    client = make_client(tmp_path, SigningKey.generate(), ip_range_blacklist=[])
    try:
        with pytest.raises(FederationUnreachable) as e:
            await client.get_json(f"localhost:{free_port()}", "/_matrix/x", timeout=10)
        assert e.value.destination.startswith("localhost:")
        with pytest.raises(FederationUnreachable, match="cannot resolve"):
            await client.get_json("bad name", "/_matrix/x")
        with pytest.raises(FederationUnreachable):
            await client.get_json("unknown.test:1", "/_matrix/x")
    finally:
        await client.close()


async def test_srv_delegation_sends_the_original_name_as_host_and_sni(tmp_path: Path) -> None:
    from starling.federation.discovery import SrvRecord
    from tests.federation.harness import free_port

    # The certificate is for example.test only: the name the spec says to check.
    pki = pki_for(tmp_path, ("example.test",))
    key = SigningKey.generate()
    recorder = Recorder(key, [])
    async with tls_app(recording_app(recorder), pki) as port:
        srv = TableSrvResolver(
            {"_matrix-fed._tcp.example.test": [SrvRecord(10, 0, port, "box.internal.test")]}
        )
        client = FederationClient(
            client_config(
                tmp_path, ip_range_blacklist=[], federation_custom_ca_list=[str(pki.ca_cert)]
            ),
            key,
            srv_resolver=srv,
            host_resolver=TableHostResolver(
                {"example.test": "127.0.0.1", "box.internal.test": "127.0.0.1"}
            ),
            well_known_port=free_port(),  # nothing there: no well-known
        )
        try:
            assert (await client.get_json("example.test", "/_matrix/x"))["ok"]
        finally:
            await client.close()
    (seen,) = recorder.seen
    assert seen["host"] == "example.test"
    assert seen["destination"] == "example.test"


async def test_a_closed_keepalive_connection_is_retried_once(tmp_path: Path) -> None:
    """The server answers once, keeps the connection, then drops it on the next request
    without an answer (as when its idle timeout fires): the client sends again on a new
    connection instead of calling the server unreachable."""
    import asyncio
    import ssl

    pki = pki_for(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.cert), str(pki.key))
    connections: list[int] = []
    body = b'{"ok":true}'
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        first = len(connections) == 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
            writer.write(answer)
            await writer.drain()
            if first:
                await reader.readuntil(b"\r\n\r\n")  # the second request: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = make_client(
        tmp_path, SigningKey.generate(), ip_range_blacklist=[], federation_verify_certificates=False
    )
    try:
        async with server:
            # POST: aiohttp itself retries only idempotent methods.
            for _ in range(2):
                answer_ = await client.post_json(f"localhost:{port}", "/_matrix/x", {})
                assert answer_ == {"ok": True}
    finally:
        await client.close()
    assert len(connections) == 2


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
