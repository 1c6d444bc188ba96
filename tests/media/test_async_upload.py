"""Asynchronous uploads: POST /create, then PUT /upload/{serverName}/{mediaId}."""

from __future__ import annotations

import asyncio
import time

from tests.media.conftest import MakeHs, get, media_id
from tests.support.harness import Harness

V1 = "/_matrix/client/v1/media"
V3 = "/_matrix/media/v3"


async def _create(hs: Harness, token: str) -> tuple[str, int]:
    status, body = await hs.request("POST", "/_matrix/media/v1/create", token)
    assert status == 200, body
    return media_id(body["content_uri"]), body["unused_expires_at"]


async def test_create_then_upload(hs: Harness) -> None:
    _, token = await hs.register()
    before = int(time.time() * 1000)
    mid, expires = await _create(hs, token)
    # Spec's recommended default: 24 hours.
    assert before + 24 * 3600 * 1000 - 5000 <= expires <= before + 24 * 3600 * 1000 + 5000
    status, body = await hs.request(
        "PUT", f"{V3}/upload/{hs.server_name}/{mid}?filename=late.txt", token, raw=b"later"
    )
    assert status == 200 and body == {}
    status, headers, data = await get(hs, f"{V1}/download/{hs.server_name}/{mid}", token)
    assert status == 200 and data == b"later"
    assert headers["Content-Disposition"] == 'attachment; filename="late.txt"'


async def test_only_the_creator_and_only_once(hs: Harness) -> None:
    _, alice = await hs.register()
    _, mallory = await hs.register()
    mid, _ = await _create(hs, alice)
    path = f"{V3}/upload/{hs.server_name}/{mid}"
    status, body = await hs.request("PUT", path, mallory, raw=b"evil")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await hs.request("PUT", path, alice, raw=b"good")
    assert status == 200
    status, body = await hs.request("PUT", path, alice, raw=b"again")
    assert status == 409 and body["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"
    status, _, data = await get(hs, f"{V1}/download/{hs.server_name}/{mid}", alice)
    assert data == b"good"


async def test_concurrent_uploads_to_one_id_one_wins(hs: Harness) -> None:
    _, alice = await hs.register()
    mid, _ = await _create(hs, alice)
    path = f"{V3}/upload/{hs.server_name}/{mid}"
    results = await asyncio.gather(
        *(hs.request("PUT", path, alice, raw=bytes([i]) * 1000) for i in range(4))
    )
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 409, 409, 409]


async def test_unknown_uploaded_or_foreign_ids(hs: Harness) -> None:
    _, alice = await hs.register()
    status, body = await hs.request(
        "PUT", f"{V3}/upload/{hs.server_name}/neverCreated", alice, raw=b"x"
    )
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await hs.request("PUT", f"{V3}/upload/other.example/someMedia", alice, raw=b"x")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    # Media uploaded with POST /upload cannot be overwritten either.
    status, body = await hs.request("POST", f"{V3}/upload", alice, raw=b"direct")
    mid = media_id(body["content_uri"])
    status, body = await hs.request("PUT", f"{V3}/upload/{hs.server_name}/{mid}", alice, raw=b"y")
    assert status == 409 and body["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"


async def test_expired_ids(make_hs: MakeHs) -> None:
    hs = await make_hs(unused_expiration_time="1m")
    _, alice = await hs.register()
    mid, _ = await _create(hs, alice)
    clock = hs.services.media._clock
    hs.services.media._clock = lambda: clock() + 61
    status, body = await hs.request("PUT", f"{V3}/upload/{hs.server_name}/{mid}", alice, raw=b"x")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, _, _ = await get(hs, f"{V1}/download/{hs.server_name}/{mid}?timeout_ms=0", alice)
    assert status == 404
    # Creating again sweeps the expired reservation away.
    await _create(hs, alice)
    assert await hs.services.media.get_media_info(hs.server_name, mid) is None


async def test_download_before_upload_waits_then_504(hs: Harness) -> None:
    _, alice = await hs.register()
    mid, _ = await _create(hs, alice)
    start = time.monotonic()
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{mid}?timeout_ms=300", alice)
    elapsed = time.monotonic() - start
    assert status == 504 and b"M_NOT_YET_UPLOADED" in body
    assert 0.25 <= elapsed < 5
    status, _, body = await get(
        hs, f"{V1}/thumbnail/{hs.server_name}/{mid}?width=32&height=32&timeout_ms=0", alice
    )
    assert status == 504 and b"M_NOT_YET_UPLOADED" in body


async def test_waiting_download_gets_the_content_when_it_arrives(hs: Harness) -> None:
    _, alice = await hs.register()
    mid, _ = await _create(hs, alice)
    waiter = asyncio.create_task(
        get(hs, f"{V1}/download/{hs.server_name}/{mid}?timeout_ms=10000", alice)
    )
    await asyncio.sleep(0.2)
    assert not waiter.done()
    start = time.monotonic()
    status, _ = await hs.request(
        "PUT", f"{V3}/upload/{hs.server_name}/{mid}", alice, raw=b"arrived"
    )
    assert status == 200
    status, _, body = await waiter
    assert status == 200 and body == b"arrived"
    assert time.monotonic() - start < 2


async def test_pending_upload_limit(make_hs: MakeHs) -> None:
    hs = await make_hs(max_pending_media_uploads=2)
    _, alice = await hs.register()
    _, bob = await hs.register()
    await _create(hs, alice)
    mid, _ = await _create(hs, alice)
    status, body = await hs.request("POST", "/_matrix/media/v1/create", alice)
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED"
    await _create(hs, bob)
    # Uploading to one frees a slot.
    await hs.request("PUT", f"{V3}/upload/{hs.server_name}/{mid}", alice, raw=b"x")
    await _create(hs, alice)


async def test_create_is_rate_limited(make_hs: MakeHs) -> None:
    hs = await make_hs(
        rc_media_create={"per_second": 0.001, "burst_count": 2}, max_pending_media_uploads=100
    )
    _, alice = await hs.register()
    await _create(hs, alice)
    await _create(hs, alice)
    status, body = await hs.request("POST", "/_matrix/media/v1/create", alice)
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED"
    assert body["retry_after_ms"] > 0


async def test_frozen_pending_media_is_not_found_at_once_on_old_endpoints(hs: Harness) -> None:
    _, alice = await hs.register()
    mid, _ = await _create(hs, alice)
    start = time.monotonic()
    status, _, body = await get(hs, f"{V3}/download/{hs.server_name}/{mid}?timeout_ms=5000")
    assert status == 404 and b"M_NOT_FOUND" in body
    assert time.monotonic() - start < 2
