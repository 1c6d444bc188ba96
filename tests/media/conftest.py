"""Media test helpers: homeservers with media config overrides, upload/download shortcuts,
images made with Pillow."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDictProxy
from PIL import Image

from starling.storage import Database
from tests.support.harness import Harness, make_harness

MakeHs = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_hs(database: Database, tmp_path: Path) -> AsyncIterator[MakeHs]:
    """A factory for homeservers on the test database with config overrides."""
    async with AsyncExitStack() as stack:
        count = 0

        async def factory(**overrides: Any) -> Harness:
            nonlocal count
            count += 1
            where = tmp_path / f"hs{count}"
            where.mkdir()
            overrides.setdefault("media_store_path", str(where / "media"))
            harness = await stack.enter_async_context(make_harness(database, where, **overrides))
            stack.push_async_callback(harness.services.media.close)
            return harness

        yield factory


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def upload(
    hs: Harness,
    token: str,
    data: bytes,
    content_type: str | None = "application/octet-stream",
    filename: str | None = None,
) -> str:
    headers = auth(token)
    if content_type is not None:
        headers["Content-Type"] = content_type
    params = {"filename": filename} if filename is not None else None
    async with hs.client.post(
        "/_matrix/media/v3/upload", data=data, headers=headers, params=params
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        mxc: str = body["content_uri"]
        assert mxc.startswith(f"mxc://{hs.server_name}/")
        return mxc


async def get(
    hs: Harness, path: str, token: str | None = None, params: dict[str, str] | None = None
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with hs.client.get(path, headers=auth(token), params=params) as resp:
        return resp.status, resp.headers, await resp.read()


def media_id(mxc: str) -> str:
    return mxc.rsplit("/", 1)[1]


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB", **save: Any) -> bytes:
    """A gradient image (so resizing and encoding do real work)."""
    grad = Image.linear_gradient("L")
    bands = [
        grad.resize(size),
        grad.transpose(Image.Transpose.ROTATE_90).resize(size),
        Image.new("L", size, 128),
    ]
    if mode == "RGBA":
        bands.append(Image.new("L", size, 200))
    im = Image.merge(mode, bands)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def animated_bytes(fmt: str, size: tuple[int, int], frames: int = 4) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    ims = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, fmt, save_all=True, append_images=ims[1:], duration=80, loop=0)
    return buf.getvalue()
