"""Server discovery (spec: Server-Server API > Resolving server names): IP literals,
explicit ports, .well-known (over real HTTPS on loopback, cached), SRV order and fallback,
Host header and certificate name. SRV and host names come from tables: no real DNS."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from aiohttp import web

from starling.federation.client import FederationClient
from starling.federation.discovery import (
    WELL_KNOWN_DEFAULT_CACHE,
    WELL_KNOWN_INVALID_CACHE,
    WELL_KNOWN_MAX_CACHE,
    WELL_KNOWN_MIN_CACHE,
    DiscoveryError,
    ServerResolver,
    SrvRecord,
    Target,
    WellKnownResponse,
    order_srv,
    split_server_name,
    well_known_cache_period,
)
from starling.protocol.signing import SigningKey
from tests.federation.tls_servers import client_config, pki_for, tls_app
from tests.support.offline_dns import TableHostResolver, TableSrvResolver


class FakeWellKnown:
    def __init__(self) -> None:
        self.answers: dict[str, WellKnownResponse | Exception] = {}
        self.fetches: list[str] = []

    async def __call__(self, hostname: str) -> WellKnownResponse:
        self.fetches.append(hostname)
        answer = self.answers.get(hostname, WellKnownResponse(404, b"", None))
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok(body: str, cache_control: str | None = None) -> WellKnownResponse:
    return WellKnownResponse(200, body.encode(), cache_control)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(
    srv: dict[str, list[SrvRecord]] | None = None,
) -> tuple[ServerResolver, TableSrvResolver, FakeWellKnown, Clock]:
    table = TableSrvResolver(srv)
    wk = FakeWellKnown()
    clock = Clock()
    return ServerResolver(table, wk, clock=clock, rng=random.Random(1)), table, wk, clock


async def test_ip_literals() -> None:
    r, srv, wk, _ = resolver()
    assert await r.resolve("1.2.3.4") == [Target("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")]
    assert await r.resolve("1.2.3.4:99") == [Target("1.2.3.4", 99, "1.2.3.4:99", "1.2.3.4")]
    (v6,) = await r.resolve("[2001:db8::1]:8000")
    assert v6 == Target("2001:db8::1", 8000, "[2001:db8::1]:8000", "2001:db8::1")
    assert v6.sni is None  # no SNI for an IP address
    assert srv.queries == [] and wk.fetches == []


async def test_explicit_port_skips_well_known_and_srv() -> None:
    r, srv, wk, _ = resolver({"_matrix-fed._tcp.example.test": [SrvRecord(0, 0, 1, "x.test")]})
    (t,) = await r.resolve("example.test:1234")
    assert t == Target("example.test", 1234, "example.test:1234", "example.test")
    assert t.sni == "example.test"
    assert srv.queries == [] and wk.fetches == []


async def test_well_known_delegation_with_port() -> None:
    r, srv, wk, _ = resolver()
    wk.answers["example.test"] = ok('{"m.server": "matrix.example.test:443"}')
    (t,) = await r.resolve("example.test")
    # Host header and certificate: the delegated name, not the original one.
    assert t == Target("matrix.example.test", 443, "matrix.example.test:443", "matrix.example.test")
    assert srv.queries == []


async def test_well_known_delegation_to_ip_literal() -> None:
    r, _, wk, _ = resolver()
    wk.answers["example.test"] = ok('{"m.server": "[2001:db8::5]"}')
    assert await r.resolve("example.test") == [
        Target("2001:db8::5", 8448, "[2001:db8::5]", "2001:db8::5")
    ]


async def test_well_known_delegation_without_port_uses_srv_of_delegated_name() -> None:
    r, srv, wk, _ = resolver(
        {
            "_matrix-fed._tcp.hs.example.test": [SrvRecord(10, 0, 8449, "box.example.test.")],
            "_matrix._tcp.hs.example.test": [SrvRecord(0, 0, 1, "old.example.test")],
        }
    )
    wk.answers["example.test"] = ok('{"m.server": "hs.example.test"}')
    assert await r.resolve("example.test") == [
        Target("box.example.test", 8449, "hs.example.test", "hs.example.test")
    ]
    # _matrix-fed found: the deprecated _matrix is not asked.
    assert srv.queries == ["_matrix-fed._tcp.hs.example.test"]


async def test_deprecated_srv_then_8448() -> None:
    r, srv, wk, _ = resolver({"_matrix._tcp.example.test": [SrvRecord(0, 0, 7000, "b.test")]})
    assert await r.resolve("example.test") == [
        Target("b.test", 7000, "example.test", "example.test")
    ]
    assert srv.queries == ["_matrix-fed._tcp.example.test", "_matrix._tcp.example.test"]
    r, srv, wk, _ = resolver()
    assert await r.resolve("plain.test") == [Target("plain.test", 8448, "plain.test", "plain.test")]
    assert wk.fetches == ["plain.test"]


async def test_srv_targets_in_priority_order() -> None:
    records = [
        SrvRecord(20, 0, 3, "c.test"),
        SrvRecord(10, 5, 1, "a.test"),
        SrvRecord(10, 5, 2, "b.test"),
        SrvRecord(30, 0, 4, "."),  # "service not available here": dropped
    ]
    r, _, _, _ = resolver({"_matrix-fed._tcp.example.test": records})
    targets = await r.resolve("example.test")
    assert [t.host for t in targets][2:] == ["c.test"]
    assert {t.host for t in targets[:2]} == {"a.test", "b.test"}
    assert all(t.host_header == "example.test" == t.tls_name for t in targets)


def test_srv_weights_are_honoured() -> None:
    rng = random.Random(7)
    heavy = SrvRecord(0, 90, 1, "heavy.test")
    light = SrvRecord(0, 10, 1, "light.test")
    firsts = [order_srv([light, heavy], rng)[0].target for _ in range(500)]
    assert 350 < firsts.count("heavy.test") < 500


async def test_well_known_is_cached_and_expires() -> None:
    r, _, wk, clock = resolver()
    wk.answers["example.test"] = ok('{"m.server": "a.test:1"}', "public, max-age=600")
    await r.resolve("example.test")
    clock.now += 599
    await r.resolve("example.test")
    assert wk.fetches == ["example.test"]
    clock.now += 2
    wk.answers["example.test"] = ok('{"m.server": "b.test:2"}')
    assert (await r.resolve("example.test"))[0].host == "b.test"
    assert len(wk.fetches) == 2


async def test_invalid_well_known_falls_back_and_is_cached_for_an_hour() -> None:
    r, _, wk, clock = resolver()
    for body in (b"not json", b"[]", b'{"m.server": 3}', b'{"m.server": "bad name!"}'):
        wk.answers["example.test"] = WellKnownResponse(200, body, None)
        clock.now += WELL_KNOWN_INVALID_CACHE + 1
        assert await r.resolve("example.test") == [
            Target("example.test", 8448, "example.test", "example.test")
        ]
    fetched = len(wk.fetches)
    clock.now += WELL_KNOWN_INVALID_CACHE - 1
    await r.resolve("example.test")
    assert len(wk.fetches) == fetched


async def test_unreachable_well_known_backs_off_exponentially() -> None:
    r, _, wk, clock = resolver()
    wk.answers["down.test"] = OSError("connection refused")
    await r.resolve("down.test")
    clock.now += 119
    await r.resolve("down.test")
    assert len(wk.fetches) == 1  # 2 minutes
    clock.now += 2
    await r.resolve("down.test")
    assert len(wk.fetches) == 2
    clock.now += 200
    await r.resolve("down.test")
    assert len(wk.fetches) == 2  # now 4 minutes
    clock.now += 50
    await r.resolve("down.test")
    assert len(wk.fetches) == 3


def test_cache_periods() -> None:
    assert well_known_cache_period(None) == WELL_KNOWN_DEFAULT_CACHE
    assert well_known_cache_period("max-age=3600") == 3600
    assert well_known_cache_period("public, max-age=10") == WELL_KNOWN_MIN_CACHE
    assert well_known_cache_period("max-age=99999999") == WELL_KNOWN_MAX_CACHE
    assert well_known_cache_period("no-store") == WELL_KNOWN_MIN_CACHE
    assert well_known_cache_period("private") == WELL_KNOWN_DEFAULT_CACHE


def test_malformed_names_and_ports() -> None:
    for bad in ("", "a b", "example.test:0", "example.test:99999", "[1.2.3.4]", "x:"):
        with pytest.raises(DiscoveryError):
            split_server_name(bad)
    assert split_server_name("Example.TEST:80") == ("example.test", 80)


# --- .well-known over real HTTPS -------------------------------------------------------


async def test_well_known_fetched_over_https_with_redirect_and_cache(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append("redirect")
        raise web.HTTPFound("/real-well-known")

    async def real(request: web.Request) -> web.Response:
        hits.append(request.host)
        return web.json_response(
            {"m.server": "fed.example.test:8443"}, headers={"Cache-Control": "max-age=3600"}
        )

    app = web.Application()
    app.router.add_get("/.well-known/matrix/server", redirect)
    app.router.add_get("/real-well-known", real)
    async with tls_app(app, pki) as port:
        config = client_config(
            tmp_path, ip_range_blacklist=[], federation_custom_ca_list=[str(pki.ca_cert)]
        )
        client = FederationClient(
            config,
            SigningKey.generate(),
            srv_resolver=TableSrvResolver(),
            host_resolver=TableHostResolver({"example.test": "127.0.0.1"}),
            well_known_port=port,
        )
        try:
            for _ in range(2):
                assert await client.resolver.resolve("example.test") == [
                    Target("fed.example.test", 8443, "fed.example.test:8443", "fed.example.test")
                ]
        finally:
            await client.close()
    assert hits == ["redirect", f"example.test:{port}"]  # once: then cached


async def test_well_known_with_untrusted_certificate_is_not_used(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)

    async def well_known(request: web.Request) -> web.Response:
        return web.json_response({"m.server": "evil.test:1"})

    app = web.Application()
    app.router.add_get("/.well-known/matrix/server", well_known)
    async with tls_app(app, pki) as port:
        # Verification on, the system CAs only: the test CA is not trusted.
        client = FederationClient(
            client_config(tmp_path, ip_range_blacklist=[]),
            SigningKey.generate(),
            srv_resolver=TableSrvResolver(),
            host_resolver=TableHostResolver({"example.test": "127.0.0.1"}),
            well_known_port=port,
        )
        try:
            assert await client.resolver.resolve("example.test") == [
                Target("example.test", 8448, "example.test", "example.test")
            ]
        finally:
            await client.close()


async def test_well_known_refused_on_a_blacklisted_address(tmp_path: Path) -> None:
    pki = pki_for(tmp_path)
    hits: list[int] = []

    async def well_known(request: web.Request) -> web.Response:
        hits.append(1)
        return web.json_response({"m.server": "internal.test:1"})

    app = web.Application()
    app.router.add_get("/.well-known/matrix/server", well_known)
    async with tls_app(app, pki) as port:
        client = FederationClient(
            client_config(tmp_path, federation_verify_certificates=False),  # default blacklist
            SigningKey.generate(),
            srv_resolver=TableSrvResolver(),
            host_resolver=TableHostResolver({"example.test": "127.0.0.1"}),
            well_known_port=port,
        )
        try:
            (t,) = await client.resolver.resolve("example.test")
            assert t.host == "example.test" and t.port == 8448
        finally:
            await client.close()
    assert hits == []


async def test_well_known_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import starling.federation.discovery as discovery

    monkeypatch.setattr(discovery, "WELL_KNOWN_CACHE_SIZE", 5)
    r, *_ = resolver()
    for i in range(20):
        await r.resolve(f"host{i}.test")
    assert len(r._well_known) == 5
    assert list(r._well_known) == [f"host{i}.test" for i in range(15, 20)]


async def test_dnspython_resolver_without_configuration_finds_no_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dns.asyncresolver
    import dns.resolver

    from starling.federation.discovery import DnsPythonSrvResolver

    def unconfigured(*args: object, **kwargs: object) -> None:
        raise dns.resolver.NoResolverConfiguration("cannot open /etc/resolv.conf")

    monkeypatch.setattr(dns.asyncresolver, "Resolver", unconfigured)
    resolver = DnsPythonSrvResolver()  # constructing it reads nothing yet
    assert await resolver.resolve_srv("_matrix-fed._tcp.example.test") == []
    assert await resolver.resolve_srv("_matrix._tcp.example.test") == []


async def test_a_known_delegation_survives_an_unreachable_well_known() -> None:
    r, _, wk, clock = resolver()
    wk.answers["example.test"] = ok('{"m.server": "fed.example.test:8443"}', "max-age=3600")
    delegated = [Target("fed.example.test", 8443, "fed.example.test:8443", "fed.example.test")]
    assert await r.resolve("example.test") == delegated
    # Expired, and the well-known is down: the delegation stays (during the backoff).
    clock.now += 3601
    wk.answers["example.test"] = OSError("connection reset")
    assert await r.resolve("example.test") == delegated
    clock.now += 121
    assert await r.resolve("example.test") == delegated
    # Two days after it was last answered, it is not trusted any more.
    clock.now += 48 * 3600
    assert await r.resolve("example.test") == [
        Target("example.test", 8448, "example.test", "example.test")
    ]
    # An answer that is not a delegation (404) replaces it at once.
    r, _, wk, clock = resolver()
    wk.answers["example.test"] = ok('{"m.server": "fed.example.test:8443"}', "max-age=3600")
    await r.resolve("example.test")
    clock.now += 3601
    wk.answers["example.test"] = WellKnownResponse(404, b"", None)
    assert (await r.resolve("example.test"))[0].port == 8448
