"""Media across two real `starling serve` processes over TLS: an image uploaded on one
server is downloaded and thumbnailed through the other (GET /_matrix/client/v1/media/...
over federation's /media/download), cached there, and the federation endpoints answer
the spec's multipart body only to signed requests."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from starling.protocol.x_matrix import sign_request
from tests.federation.harness import FederatedServer, User, federation_servers
from tests.media.conftest import image_bytes
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

V1 = "/_matrix/client/v1/media"


async def upload(server: FederatedServer, user: User, data: bytes, name: str, ctype: str) -> str:
    async with server._http().post(
        server.client_url + "/_matrix/media/v3/upload",
        params={"filename": name},
        data=data,
        headers={"Authorization": f"Bearer {user.token}", "Content-Type": ctype},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        mxc: str = body["content_uri"]
        return mxc.removeprefix("mxc://")


async def get_raw(
    server: FederatedServer, path: str, token: str | None = None, **params: str
) -> tuple[int, Any, bytes]:
    async with server._http().get(
        server.client_url + path,
        params=params,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        timeout=aiohttp.ClientTimeout(total=60),
    ) as resp:
        return resp.status, resp.headers, await resp.read()


async def check_image_crosses(
    origin: FederatedServer, origin_user: User, other: FederatedServer, other_user: User
) -> None:
    """An image uploaded by `origin_user` downloads and thumbnails for `other_user`."""
    png = image_bytes("PNG", (800, 600))
    mxc = await upload(origin, origin_user, png, "ä picture.png", "image/png")
    status, headers, body = await get_raw(other, f"{V1}/download/{mxc}", other_user.token)
    assert status == 200, (body[:300], other.log_tail())
    assert body == png and headers["Content-Type"] == "image/png"
    assert "picture.png" in headers["Content-Disposition"]
    status, headers, body = await get_raw(
        other, f"{V1}/thumbnail/{mxc}", other_user.token, width="64", height="64", method="scale"
    )
    assert status == 200, body[:300]
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.width < 800  # each server picks its own sizes; smaller than the image
    # A thumbnail first, of media the other server has not seen yet.
    second = image_bytes("JPEG", (200, 200))
    mxc2 = await upload(origin, origin_user, second, "b.jpg", "image/jpeg")
    status, headers, body = await get_raw(
        other, f"{V1}/thumbnail/{mxc2}", other_user.token, width="32", height="32", method="crop"
    )
    assert status == 200, body[:300]
    with Image.open(io.BytesIO(body)) as thumb:
        assert thumb.size == (32, 32)
    # Unknown media of the origin: 404, as the origin says.
    origin_name = mxc.split("/")[0]
    status, _, body = await get_raw(
        other, f"{V1}/download/{origin_name}/doesNotExist", other_user.token
    )
    assert status == 404 and b"M_NOT_FOUND" in body, body


async def federation_media_request(
    target: FederatedServer, path: str, origin: FederatedServer | None
) -> tuple[int, Any, bytes]:
    headers = {"Host": target.server_name}
    if origin is not None:
        headers["Authorization"] = sign_request(
            origin.signing_key(),
            method="GET",
            uri=path,
            origin=origin.server_name,
            destination=target.server_name,
            content=None,
        )
    async with target._http().get(
        target.federation_url + path,
        headers=headers,
        ssl=False,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        return resp.status, resp.headers, await resp.read()


@pytest.mark.parametrize("engine", ENGINES)
async def test_media_crosses_two_servers(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice, bob = await a.register("alice"), await b.register("bob")
        await check_image_crosses(a, alice, b, bob)
        await check_image_crosses(b, bob, a, alice)

        # Concurrent first downloads of one media: all served (the origin asked once,
        # and the cached copy serves the rest).
        data = b"some file " * 1000
        mxc = await upload(a, alice, data, "f.bin", "application/octet-stream")
        results = await asyncio.gather(
            *(get_raw(b, f"{V1}/download/{mxc}", bob.token) for _ in range(5))
        )
        assert all(s == 200 and body == data for s, _, body in results), results[0][:2]
        # Not on the unauthenticated legacy path: media cached since the freeze is not served there.
        status, _, body = await get_raw(b, f"/_matrix/media/v3/download/{mxc}", bob.token)
        assert status == 404, body

        # The federation endpoint: multipart/mixed, JSON metadata then the bytes.
        media_id = mxc.split("/")[1]
        path = f"/_matrix/federation/v1/media/download/{media_id}"
        status, headers, body = await federation_media_request(a, path, b)
        assert status == 200, body[:300]
        ctype = headers["Content-Type"]
        assert ctype.startswith("multipart/mixed; boundary=")
        boundary = ctype.split("boundary=")[1].encode()
        parts = body.split(b"--" + boundary)
        assert parts[0] == b"" and parts[-1] == b"--\r\n" and len(parts) == 4
        assert parts[1] == b"\r\nContent-Type: application/json\r\n\r\n{}\r\n"
        head, content = parts[2].split(b"\r\n\r\n", 1)
        assert b"Content-Type: application/octet-stream" in head
        assert content == data + b"\r\n"
        # Thumbnails over federation; bad dimensions are a Matrix error.
        png_mxc = await upload(a, alice, image_bytes("PNG", (100, 80)), "p.png", "image/png")
        thumb_path = f"/_matrix/federation/v1/media/thumbnail/{png_mxc.split('/')[1]}"
        status, headers, body = await federation_media_request(
            a, thumb_path + "?width=20&height=20&method=crop", b
        )
        assert status == 200 and headers["Content-Type"].startswith("multipart/mixed")
        status, _, body = await federation_media_request(a, thumb_path + "?width=0&height=2", b)
        assert status == 400 and b"M_INVALID_PARAM" in body
        # Unsigned: refused; unknown media: 404.
        status, _, body = await federation_media_request(a, path, None)
        assert status == 401 and b"M_UNAUTHORIZED" in body
        status, _, body = await federation_media_request(
            a, "/_matrix/federation/v1/media/download/nope", b
        )
        assert status == 404 and b"M_NOT_FOUND" in body
        # b's cached copy of a's media is never served to others as its own.
        status, _, body = await federation_media_request(b, path, a)
        assert status == 404, body
