"""URL previews and the SSRF guard: refused addresses (directly and through preview_url),
and the happy path against a page served on loopback, allowed only by the allow list."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from PIL import Image

from starling.media.opengraph import decode_html, parse_opengraph
from starling.media.ssrf import (
    BlockedAddressError,
    IPPolicy,
    guarded_session,
    guarded_socket_factory,
    is_blocked_error,
)
from tests.media.conftest import MakeHs, get, image_bytes, media_id

V1 = "/_matrix/client/v1/media"
TIMEOUT = aiohttp.ClientTimeout(total=5)

PAGE = """<!doctype html><html><head>
<meta charset="utf-8">
<title>Fallback title</title>
<meta property="og:title" content="Starling &amp; friends">
<meta property="og:description" content="  A   bird
  that sings.  ">
<meta property="og:image" content="/img.png">
<meta property="og:type" content="website">
</head><body><p>hello</p></body></html>"""

PLAIN = """<html><head><title> Just a
title </title><meta name="description" content="From the description tag">
</head><body><img src="pic.jpg"></body></html>"""


class Site:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.png = image_bytes("PNG", (120, 80))
        self.server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        routes = {
            "/page": lambda: web.Response(text=PAGE, content_type="text/html"),
            "/plain": lambda: web.Response(text=PLAIN, content_type="text/html"),
            "/img.png": lambda: web.Response(body=self.png, content_type="image/png"),
            "/picture": lambda: web.Response(body=self.png, content_type="image/png"),
            "/to-page": lambda: web.HTTPFound("/page"),
            "/to-private": lambda: web.HTTPFound("http://10.0.0.1/page"),
            "/to-mapped": lambda: web.HTTPFound(f"http://[::ffff:10.0.0.1]:{self.port}/page"),
            "/loop": lambda: web.HTTPFound("/loop"),
            "/big": lambda: web.Response(body=b"x" * 50_000, content_type="text/html"),
            "/secret/page": lambda: web.Response(text=PAGE, content_type="text/html"),
            "/missing": lambda: web.Response(status=404),
            "/binary": lambda: web.Response(body=b"\0" * 10, content_type="application/zip"),
        }
        for path, make in routes.items():

            async def handler(request: web.Request, make: Any = make) -> web.StreamResponse:
                self.hits[request.path] = self.hits.get(request.path, 0) + 1
                result = make()
                if isinstance(result, web.HTTPException):
                    raise result
                response: web.StreamResponse = result
                return response

            app.router.add_get(path, handler)
        return app

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    s.server = TestServer(s.app(), host="127.0.0.1")
    await s.server.start_server()
    try:
        yield s
    finally:
        await s.server.close()


# --- the guard on its own ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "2001:db8::1",
        "not an address",
    ],
)
def test_policy_refuses(address: str) -> None:
    assert not IPPolicy().is_allowed(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_policy_allows_public(address: str) -> None:
    assert IPPolicy().is_allowed(address)


def test_policy_lists() -> None:
    policy = IPPolicy(deny=["8.8.8.0/24"], allow=["10.1.0.0/16"])
    assert not policy.is_allowed("8.8.8.8")
    assert not policy.is_allowed("64:ff9b::808:808")  # the denied range, via NAT64
    assert policy.is_allowed("8.8.4.4")
    assert policy.is_allowed("10.1.2.3")
    assert policy.is_allowed("::ffff:10.1.2.3")
    assert not policy.is_allowed("10.2.0.1")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.1", "[::ffff:127.0.0.1]", "localhost", "[::1]"]
)
async def test_guarded_session_refuses(site: Site, host: str) -> None:
    async with guarded_session(IPPolicy(), TIMEOUT) as session:
        with pytest.raises(aiohttp.ClientError) as info:
            async with session.get(site.url("/page", host)) as resp:
                await resp.read()
        assert is_blocked_error(info.value)
    assert site.hits == {}


async def test_guarded_session_connects_when_allowed(site: Site) -> None:
    async with guarded_session(IPPolicy(allow=["127.0.0.1/32"]), TIMEOUT) as session:
        async with session.get(site.url("/page")) as resp:
            assert resp.status == 200
            assert "Starling" in await resp.text()


class _Rebinding(AbstractResolver):
    """A resolver that answers loopback, as a rebinding DNS server would after a check."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


async def test_connect_time_check_catches_what_resolution_let_through(site: Site) -> None:
    # Even with a resolver that does no checking, the socket factory refuses the peer.
    connector = aiohttp.TCPConnector(
        resolver=_Rebinding(), socket_factory=guarded_socket_factory(IPPolicy())
    )
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        with pytest.raises(aiohttp.ClientError) as info:
            async with session.get(f"http://rebind.example:{site.port}/page"):
                pass
    assert is_blocked_error(info.value)
    assert any(isinstance(e, BlockedAddressError) for e in _chain(info.value))
    assert site.hits == {}


def _chain(e: BaseException | None) -> list[BaseException]:
    out = []
    while e is not None and len(out) < 10:
        out.append(e)
        e = getattr(e, "os_error", None) or e.__cause__
    return out


# --- through preview_url ------------------------------------------------------------------


async def _preview(hs: Any, token: str, url: str) -> tuple[int, Any]:
    status, body = await hs.request("GET", f"{V1}/preview_url", token, params={"url": url})
    return status, body


async def test_previews_are_off_by_default(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs()
    _, token = await hs.register()
    status, body = await _preview(hs, token, site.url("/page"))
    assert status == 404 and body["errcode"] == "M_UNRECOGNIZED"
    assert site.hits == {}


async def test_preview_refuses_internal_addresses(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs(url_preview_enabled=True)
    _, token = await hs.register()
    for host in ("127.0.0.1", "10.0.0.1", "[::ffff:127.0.0.1]", "localhost", "[::1]"):
        status, body = await _preview(hs, token, site.url("/page", host))
        assert status == 403, (host, body)
        assert body["errcode"] == "M_FORBIDDEN"
    # 127.0.0.1 written as one number: not a canonical address, refused as a bad URL.
    status, body = await _preview(hs, token, site.url("/page", "2130706433"))
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert site.hits == {}


async def test_preview_of_an_allowed_page(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs(url_preview_enabled=True, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    _, token = await hs.register()
    status, og = await _preview(hs, token, site.url("/page"))
    assert status == 200, og
    assert og["og:title"] == "Starling & friends"
    assert og["og:description"] == "A bird that sings."
    assert og["og:type"] == "website"
    assert og["og:image"].startswith(f"mxc://{hs.server_name}/")
    assert og["og:image:type"] == "image/png"
    assert (og["og:image:width"], og["og:image:height"]) == (120, 80)
    assert og["matrix:image:size"] == len(site.png)
    # The image is in the media repository, and thumbnails of it work.
    status, _, body = await get(
        hs, f"{V1}/download/{hs.server_name}/{media_id(og['og:image'])}", token
    )
    assert status == 200 and body == site.png
    status, _, body = await get(
        hs,
        f"{V1}/thumbnail/{hs.server_name}/{media_id(og['og:image'])}?width=32&height=32&method=crop",
        token,
    )
    assert status == 200 and Image.open(io.BytesIO(body)).size == (32, 32)
    # Cached: asking again does not fetch again.
    status, again = await _preview(hs, token, site.url("/page"))
    assert status == 200 and again == og
    assert site.hits == {"/page": 1, "/img.png": 1}


async def test_preview_fallbacks_redirects_and_images(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs(url_preview_enabled=True, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    _, token = await hs.register()
    status, og = await _preview(hs, token, site.url("/plain"))
    assert status == 200
    assert og["og:title"] == "Just a title"
    assert og["og:description"] == "From the description tag"
    assert "og:image" not in og  # pic.jpg does not exist on the site
    status, og = await _preview(hs, token, site.url("/to-page"))
    assert status == 200 and og["og:title"] == "Starling & friends"
    status, og = await _preview(hs, token, site.url("/picture"))
    assert status == 200 and og["og:image"].startswith("mxc://")
    assert og["og:image:width"] == 120
    status, og = await _preview(hs, token, site.url("/binary"))
    assert status == 200 and og == {}


async def test_preview_rechecks_every_redirect(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs(url_preview_enabled=True, url_preview_ip_range_whitelist=["127.0.0.1/32"])
    _, token = await hs.register()
    for path in ("/to-private", "/to-mapped"):
        status, body = await _preview(hs, token, site.url(path))
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", path
    status, body = await _preview(hs, token, site.url("/loop"))
    assert status == 502


async def test_preview_limits_and_errors(make_hs: MakeHs, site: Site) -> None:
    hs = await make_hs(
        url_preview_enabled=True,
        url_preview_ip_range_whitelist=["127.0.0.1/32"],
        url_preview_url_blacklist=[{"path": "/secret/*"}, {"netloc": "^evil\\."}],
        max_spider_size=10_000,
    )
    _, token = await hs.register()
    status, body = await _preview(hs, token, site.url("/big"))
    assert status == 502 and body["errcode"] == "M_TOO_LARGE"
    status, body = await _preview(hs, token, site.url("/secret/page"))
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await _preview(hs, token, "http://evil.example/")
    assert status == 403
    status, body = await _preview(hs, token, site.url("/missing"))
    assert status == 502
    for bad in ("ftp://example.org/", "not a url", "http:///nohost", "javascript:alert(1)"):
        status, body = await _preview(hs, token, bad)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", bad
    status, body = await hs.request("GET", f"{V1}/preview_url", token)
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    status, body = await hs.request(
        "GET", f"{V1}/preview_url", token, params={"url": site.url("/page"), "ts": "yesterday"}
    )
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert "/secret/page" not in site.hits


def test_opengraph_parser_bounds_and_charsets() -> None:
    html = "<html><head>" + "".join(
        f'<meta property="og:k{i}" content="{"v" * 5000}">' for i in range(80)
    )
    og = parse_opengraph(html)
    assert len(og) <= 51 and all(len(v) <= 1000 for v in og.values())
    latin = '<meta charset="iso-8859-1"><title>caf\xe9</title>'.encode("latin-1")
    assert parse_opengraph(decode_html(latin, None))["og:title"] == "café"
    assert decode_html(b"\xff\xfe", "no-such-charset") == "\ufffd\ufffd"
    # Codecs Python knows but that are not text encodings, or fail on any input.
    for charset in ("base64", "rot13", "zlib", "undefined", "idna", "punycode", "utf-8\x00"):
        assert decode_html(b"<title>x\xff</title>", charset) == "<title>x\ufffd</title>"
    meta = b'<meta charset="undefined"><title>x</title>'
    assert parse_opengraph(decode_html(meta, None))["og:title"] == "x"


async def test_certificates_are_verified_unless_the_insecure_testing_switch_is_on(
    tmp_path: Any,
) -> None:
    """A page served with a certificate of an unknown CA is refused; with
    `use_insecure_ssl_client_just_for_testing_do_not_use` (test suites with their own CA,
    as Synapse's switch) it is fetched."""
    import ssl

    from tests.federation.harness import make_test_pki

    pki = make_test_pki(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PLAIN, content_type="text/html")

    app = web.Application()
    app.router.add_get("/p", page)
    runner = web.AppRunner(app)
    await runner.setup()
    tls_site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await tls_site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/p"
    policy = IPPolicy(allow=["127.0.0.0/8"])
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with guarded_session(policy, timeout) as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(url):
                    pass
        async with (
            guarded_session(policy, timeout, verify_certificates=False) as session,
            session.get(url) as resp,
        ):
            assert resp.status == 200 and "Just a" in await resp.text()
    finally:
        await runner.cleanup()
