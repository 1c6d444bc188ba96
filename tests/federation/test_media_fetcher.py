"""FederationMediaFetcher against a local HTTPS server playing another homeserver: the
v1.11 multipart answer (bytes or a `Location`), the legacy fallback for servers without
it, not-found, not-yet-uploaded, size limits, unreadable answers, and the IP range rules
on a `Location`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from starling.errors import MatrixError
from starling.federation.client import FederationClient
from starling.federation.errors import FederationUnreachable
from starling.federation.media import FederationMediaFetcher
from starling.protocol.signing import SigningKey
from starling.protocol.x_matrix import parse_header
from tests.federation.tls_servers import client_config, pki_for, tls_app
from tests.support.offline_dns import TableHostResolver, TableSrvResolver

BOUNDARY = "b0undary"


def multipart(second_part_headers: str, body: bytes) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
        f"--{BOUNDARY}\r\n{second_part_headers}\r\n\r\n".encode()
        + body
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


class Remote:
    """A homeserver serving a few media in the ways servers do."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[str] = []

    async def federation_media(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        assert parse_header(request.headers["Authorization"]).origin == "origin.test"
        media_id = request.match_info["mediaId"]
        headers = {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"}
        if media_id == "bytes":
            part = (
                "Content-Type: image/png\r\n"
                "Content-Disposition: inline; filename*=utf-8''ch%C3%A2t.png"
            )
            return web.Response(body=multipart(part, b"\x89PNG pixels"), headers=headers)
        if media_id == "located":
            location = f"https://localhost:{self.port}/files/located"
            return web.Response(body=multipart(f"Location: {location}", b""), headers=headers)
        if media_id == "blocked":
            location = f"https://127.0.0.2:{self.port}/files/located"
            return web.Response(body=multipart(f"Location: {location}", b""), headers=headers)
        if media_id == "garbage":
            return web.Response(body=b"--nope\r\n\r\n", headers=headers)
        if media_id == "notyet":
            return web.json_response(
                {"errcode": "M_NOT_YET_UPLOADED", "error": "later"}, status=504
            )
        if media_id.startswith("legacy"):
            return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "?"}, status=404)
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)

    async def legacy_media(self, request: web.Request) -> web.Response:
        self.seen.append(request.raw_path)
        if request.match_info["mediaId"] != "legacy1":
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        return web.Response(
            body=b"old style",
            headers={
                "Content-Type": "text/plain",
                "Content-Disposition": 'attachment; filename="old.txt"',
            },
        )

    async def file(self, request: web.Request) -> web.Response:
        self.seen.append(request.raw_path)
        return web.Response(
            body=b"from elsewhere",
            headers={"Content-Type": "image/gif", "Content-Disposition": "inline; filename=a.gif"},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_matrix/federation/v1/media/download/{mediaId}", self.federation_media)
        app.router.add_get("/_matrix/media/v3/download/{server}/{mediaId}", self.legacy_media)
        app.router.add_get("/files/{name}", self.file)
        return app


@asynccontextmanager
async def fetcher_and_remote(
    tmp_path: Path,
) -> AsyncIterator[tuple[FederationMediaFetcher, str, Remote]]:
    pki = pki_for(tmp_path, ("localhost", "remote.test"))
    remote = Remote()
    async with tls_app(remote.app(), pki) as port:
        remote.port = port
        client = FederationClient(
            client_config(
                tmp_path,
                ip_range_blacklist=["127.0.0.2/32"],
                federation_custom_ca_list=[str(pki.ca_cert)],
            ),
            SigningKey.generate(),
            srv_resolver=TableSrvResolver(),
            host_resolver=TableHostResolver({"localhost": "127.0.0.1", "remote.test": "127.0.0.1"}),
        )
        try:
            yield FederationMediaFetcher(client), f"remote.test:{port}", remote
        finally:
            await client.close()


async def fetch(
    fetcher: FederationMediaFetcher, server: str, media_id: str, max_bytes: int = 1 << 20
) -> tuple[str | None, str | None, bytes] | None:
    async with fetcher.fetch(server, media_id, max_bytes=max_bytes, timeout_ms=5000) as media:
        if media is None:
            return None
        data = b"".join([c async for c in media.chunks])
        return media.content_type, media.upload_name, data


async def test_multipart_answers_location_and_legacy_fallback(tmp_path: Path) -> None:
    async with fetcher_and_remote(tmp_path) as (fetcher, server, remote):
        assert await fetch(fetcher, server, "bytes") == ("image/png", "chât.png", b"\x89PNG pixels")
        # A Location part: fetched from there (unsigned), described by that answer.
        assert await fetch(fetcher, server, "located") == ("image/gif", "a.gif", b"from elsewhere")
        assert remote.seen[-1] == "/files/located"
        # No such media: None, and no fallback to the legacy endpoint.
        remote.seen.clear()
        assert await fetch(fetcher, server, "unknown") is None
        assert remote.seen == ["/_matrix/federation/v1/media/download/unknown?timeout_ms=5000"]
        # A server without the v1.11 endpoint: the legacy one, never asked to go further.
        remote.seen.clear()
        assert await fetch(fetcher, server, "legacy1") == ("text/plain", "old.txt", b"old style")
        assert remote.seen[1] == (
            f"/_matrix/media/v3/download/{server.replace(':', '%3A')}/legacy1"
            "?allow_remote=false&timeout_ms=5000"
        )
        assert await fetch(fetcher, server, "legacy2") is None


async def test_errors(tmp_path: Path) -> None:
    async with fetcher_and_remote(tmp_path) as (fetcher, server, remote):
        with pytest.raises(MatrixError) as e:
            await fetch(fetcher, server, "notyet")
        assert (e.value.status, e.value.errcode) == (504, "M_NOT_YET_UPLOADED")
        with pytest.raises(MatrixError) as e:
            await fetch(fetcher, server, "garbage")
        assert e.value.status == 502
        # A Location into a refused range is never connected to.
        remote.seen.clear()
        with pytest.raises(MatrixError) as e:
            await fetch(fetcher, server, "blocked")
        assert e.value.status == 502 and "/files/located" not in remote.seen
        with pytest.raises(FederationUnreachable, match="ip_range_blacklist"):
            async with fetcher._client.stream_url(
                f"https://127.0.0.2:{remote.port}/files/x", timeout=5, total_timeout=5
            ):
                pass
        # An unreachable server (nothing listens there) is 502, within the timeout.
        with pytest.raises(MatrixError) as e:
            await asyncio.wait_for(fetch(fetcher, "localhost:1", "x"), 30)
        assert e.value.status == 502
