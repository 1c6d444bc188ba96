"""Thumbnails of PNG, JPEG, GIF, WebP and APNG images made in the test with Pillow: sizes,
methods, animation, caching, limits, bad input."""

from __future__ import annotations

import asyncio
import io
import resource
import struct
import time
import zlib

import pytest
from PIL import Image

from tests.media.conftest import MakeHs, animated_bytes, get, image_bytes, media_id, upload
from tests.support.harness import Harness

V1 = "/_matrix/client/v1/media"


async def _thumb(
    hs: Harness, token: str, mxc: str, query: str, expect: int = 200
) -> tuple[bytes, str, Image.Image | None]:
    status, headers, body = await get(
        hs, f"{V1}/thumbnail/{hs.server_name}/{media_id(mxc)}?{query}", token
    )
    assert status == expect, body[:300]
    if status != 200:
        return body, "", None
    im = Image.open(io.BytesIO(body))
    return body, headers["Content-Type"], im


@pytest.mark.parametrize(
    ("query", "size"),
    [
        ("width=96&height=96&method=crop", (96, 96)),
        ("width=32&height=32&method=crop", (32, 32)),
        ("width=50&height=50&method=crop", (96, 96)),  # the next size up
        ("width=320&height=240&method=scale", (300, 240)),
        ("width=700&height=500&method=scale", (750, 600)),  # 800x600 box
        ("width=100&height=100", (300, 240)),  # scale is the default method
    ],
)
async def test_png_sizes(hs: Harness, query: str, size: tuple[int, int]) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (1000, 800)), "image/png")
    _, ctype, im = await _thumb(hs, token, mxc, query)
    assert ctype == "image/png"
    assert im is not None and im.format == "PNG" and im.size == size


async def test_thumbnail_headers(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (400, 400)), "image/png", "x.png")
    status, headers, _ = await get(
        hs, f"{V1}/thumbnail/{hs.server_name}/{media_id(mxc)}?width=32&height=32&method=crop", token
    )
    assert status == 200
    assert headers["Content-Disposition"] == 'inline; filename="thumbnail.png"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("sandbox;")
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"


async def test_jpeg(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("JPEG", (1200, 900)), "image/jpeg")
    _, ctype, im = await _thumb(hs, token, mxc, "width=640&height=480&method=scale")
    assert ctype == "image/jpeg" and im is not None and im.format == "JPEG"
    assert im.size == (640, 480)
    _, ctype, im = await _thumb(hs, token, mxc, "width=32&height=32&method=crop")
    assert ctype == "image/jpeg" and im is not None and im.size == (32, 32)


async def test_jpeg_exif_orientation_is_applied(hs: Harness) -> None:
    _, token = await hs.register()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed: 400x300 stored shows as 300x400
    mxc = await upload(hs, token, image_bytes("JPEG", (400, 300), exif=exif), "image/jpeg")
    _, _, im = await _thumb(hs, token, mxc, "width=320&height=240&method=scale")
    assert im is not None and im.size == (180, 240)


async def test_format_comes_from_the_bytes(hs: Harness) -> None:
    _, token = await hs.register()
    # A JPEG uploaded as "image/png" with a .png name is thumbnailed as a JPEG.
    mxc = await upload(hs, token, image_bytes("JPEG", (500, 500)), "image/png", "lie.png")
    _, ctype, im = await _thumb(hs, token, mxc, "width=96&height=96&method=crop")
    assert ctype == "image/jpeg" and im is not None and im.format == "JPEG"


async def test_webp_static(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("WEBP", (500, 400)), "image/webp")
    _, ctype, im = await _thumb(hs, token, mxc, "width=320&height=240&method=scale")
    assert ctype == "image/png" and im is not None and im.size == (300, 240)
    # animated=true on a still image behaves as animated=false.
    _, ctype, im = await _thumb(hs, token, mxc, "width=96&height=96&method=crop&animated=true")
    assert ctype == "image/png" and im is not None and im.size == (96, 96)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
async def test_animated(hs: Harness, fmt: str) -> None:
    _, token = await hs.register()
    data = animated_bytes(fmt, (200, 200), frames=4)
    mxc = await upload(hs, token, data, f"image/{fmt.lower()}")
    _, ctype, im = await _thumb(hs, token, mxc, "width=96&height=96&method=crop&animated=true")
    assert ctype == "image/webp"
    assert im is not None and im.size == (96, 96)
    assert getattr(im, "is_animated", False) and im.n_frames == 4
    # Without animated=true: a still image.
    for query in ("width=96&height=96&method=crop", "width=96&height=96&animated=false"):
        _, ctype, im = await _thumb(hs, token, mxc, query)
        assert ctype == "image/png" and im is not None
        assert not getattr(im, "is_animated", False)


async def test_small_images_are_served_as_they_are(hs: Harness) -> None:
    _, token = await hs.register()
    png = image_bytes("PNG", (64, 48))
    mxc = await upload(hs, token, png, "image/png")
    body, ctype, im = await _thumb(hs, token, mxc, "width=320&height=240")
    assert body == png and ctype == "image/png"
    # Never upscaled: a 64x48 image asked as 96x96 crop is the original too.
    body, _, _ = await _thumb(hs, token, mxc, "width=96&height=96&method=crop")
    assert body == png
    # An animated GIF smaller than asked: the original with animated=true, a still otherwise.
    gif = animated_bytes("GIF", (40, 40))
    mxc = await upload(hs, token, gif, "image/gif")
    body, ctype, _ = await _thumb(hs, token, mxc, "width=96&height=96&animated=true")
    assert body == gif and ctype == "image/gif"
    body, ctype, im = await _thumb(hs, token, mxc, "width=96&height=96")
    assert ctype == "image/png" and im is not None and im.size == (40, 40)


async def test_crop_of_a_narrow_image_keeps_the_aspect_without_upscaling(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (60, 500)), "image/png")
    _, _, im = await _thumb(hs, token, mxc, "width=96&height=96&method=crop")
    assert im is not None and im.size == (60, 60)


async def test_dynamic_thumbnails(make_hs: MakeHs) -> None:
    hs = await make_hs(dynamic_thumbnails=True)
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (1000, 800)), "image/png")
    _, _, im = await _thumb(hs, token, mxc, "width=50&height=70&method=crop")
    assert im is not None and im.size == (50, 70)
    _, _, im = await _thumb(hs, token, mxc, "width=100&height=100&method=scale")
    assert im is not None and im.size == (100, 80)


async def test_thumbnails_are_cached(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (1000, 800)), "image/png")
    query = "width=96&height=96&method=crop"
    results = await asyncio.gather(*(_thumb(hs, token, mxc, query) for _ in range(5)))
    assert len({body for body, _, _ in results}) == 1
    store = hs.services.media.store
    thumbs = await store.get_thumbnails(hs.server_name, media_id(mxc))
    assert [(t.target_width, t.target_height, t.method, t.width, t.height) for t in thumbs] == [
        (96, 96, "crop", 96, 96)
    ]
    assert await hs.services.media.files.exists(thumbs[0].sha256)
    # Deleting the media removes its thumbnails and their files.
    await hs.services.media.delete_media(hs.server_name, media_id(mxc))
    assert not await hs.services.media.files.exists(thumbs[0].sha256)


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_decompression_bomb_is_refused_fast(hs: Harness) -> None:
    _, token = await hs.register()
    bomb = _png_claiming(50_000, 50_000)  # 7.5 GB of pixels in a few hundred bytes
    mxc = await upload(hs, token, bomb, "image/png")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    for query in ("width=32&height=32&method=crop", "width=800&height=600&animated=true"):
        body, _, _ = await _thumb(hs, token, mxc, query, expect=413)
        assert b"M_TOO_LARGE" in body
    assert time.monotonic() - start < 2
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert rss_after - rss_before < 100 * 1024  # KiB: nothing near the claimed size
    # The download itself still works: it is only bytes.
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert status == 200 and body == bomb


async def test_pixel_limit_is_configurable(make_hs: MakeHs) -> None:
    hs = await make_hs(max_image_pixels=10_000)
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (200, 200)), "image/png")
    body, _, _ = await _thumb(hs, token, mxc, "width=32&height=32", expect=413)
    assert b"M_TOO_LARGE" in body


@pytest.mark.parametrize(
    ("data", "ctype"),
    [
        (b"just some text", "text/plain"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (image_bytes("PNG", (300, 300))[:200], "image/png"),  # truncated
        (image_bytes("BMP", (300, 300)), "image/bmp"),  # not a format we decode
    ],
)
async def test_cannot_thumbnail(hs: Harness, data: bytes, ctype: str) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, data, ctype)
    body, _, _ = await _thumb(hs, token, mxc, "width=32&height=32&method=crop", expect=400)
    assert b"M_UNKNOWN" in body


@pytest.mark.parametrize(
    ("query", "errcode"),
    [
        ("height=32", "M_MISSING_PARAM"),
        ("width=32", "M_MISSING_PARAM"),
        ("width=-1&height=32", "M_INVALID_PARAM"),
        ("width=0&height=32", "M_INVALID_PARAM"),
        ("width=abc&height=32", "M_INVALID_PARAM"),
        ("width=32&height=32&method=stretch", "M_INVALID_PARAM"),
        ("width=32&height=32&animated=maybe", "M_INVALID_PARAM"),
        ("width=32&height=32&timeout_ms=soon", "M_INVALID_PARAM"),
    ],
)
async def test_bad_parameters(hs: Harness, query: str, errcode: str) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (100, 100)), "image/png")
    body, _, _ = await _thumb(hs, token, mxc, query, expect=400)
    assert errcode.encode() in body


async def test_huge_requested_size_is_clamped(hs: Harness) -> None:
    _, token = await hs.register()
    png = image_bytes("PNG", (1000, 800))
    mxc = await upload(hs, token, png, "image/png")
    body, _, _ = await _thumb(hs, token, mxc, "width=99999999999&height=99999999999")
    assert body == png


def _corrupt_pixels(data: bytes) -> bytes:
    """A PNG whose header is fine and whose pixel data is garbage."""
    start = data.index(b"IDAT") + 8
    return data[:start] + bytes(b ^ 0x5A for b in data[start : start + 200]) + data[start + 200 :]


@pytest.mark.parametrize(
    "query",
    [
        "width=32&height=32&method=crop",
        "width=64&height=64&method=scale",
        "width=1000&height=1000&method=scale",  # larger than the image: no resizing needed
    ],
)
async def test_corrupt_image_is_an_error_not_a_broken_thumbnail(hs: Harness, query: str) -> None:
    _, token = await hs.register()
    data = _corrupt_pixels(image_bytes("PNG", (320, 240)))
    mxc = await upload(hs, token, data, "image/png")
    status, headers, body = await get(
        hs, f"{V1}/thumbnail/{hs.server_name}/{media_id(mxc)}?{query}", token
    )
    assert status == 400 and b"M_UNKNOWN" in body, (status, headers, body[:100])


async def test_scale_picks_a_size_smaller_than_the_original(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, image_bytes("PNG", (320, 240)), "image/png")
    _, _, im = await _thumb(hs, token, mxc, "width=64&height=64&method=scale")
    assert im is not None and im.size[0] <= 96 and im.size[1] <= 96 and im.size < (320, 240)
    assert im.size == (64, 48)
    _, _, im = await _thumb(hs, token, mxc, "width=50&height=50&method=crop")
    assert im is not None and im.size == (96, 96)
