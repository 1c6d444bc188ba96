"""Uploads and downloads: round trips, safe headers, file names, limits, quotas, the freeze
of unauthenticated media, malformed IDs, and the admin operations."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from starling.config import ConfigError
from starling.media.service import RemoteMedia
from starling_client.cli import quota_line
from tests.media.conftest import MakeHs, auth, get, media_id, upload
from tests.support.harness import Harness, make_test_config

V1 = "/_matrix/client/v1/media"
V3 = "/_matrix/media/v3"
CSP = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
)


def _files_in(hs: Harness) -> list[str]:
    root = hs.services.media.files.root / "content"
    return [f for _, _, files in os.walk(root) for f in files]


async def test_round_trip_with_safe_headers(hs: Harness) -> None:
    _, token = await hs.register()
    data = b"\x89PNG not really, but the type is what the uploader said"
    mxc = await upload(hs, token, data, "image/png", "cat.png")
    status, headers, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'inline; filename="cat.png"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == CSP
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cache-Control"].startswith("private")


async def test_dangerous_types_are_attachments(hs: Harness) -> None:
    _, token = await hs.register()
    for ctype in ("text/html", "image/svg+xml", "application/javascript", "application/pdf"):
        mxc = await upload(hs, token, b"<script>alert(1)</script>", ctype, "x")
        status, headers, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
        assert status == 200
        assert headers["Content-Disposition"].startswith("attachment"), ctype
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_text_gets_a_charset_and_no_type_means_octet_stream(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, b"hello", "text/plain")
    _, headers, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Disposition"] == "inline"  # uploaded without a name
    mxc = await upload(hs, token, b"raw", None)
    _, headers, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == "attachment"


async def test_file_names_are_encoded_per_rfc_6266(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, b"x", "text/plain", 'naïve "quote".txt')
    _, headers, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert headers["Content-Disposition"] == (
        "inline; filename*=utf-8''na%C3%AFve%20%22quote%22.txt"
    )
    # The name in the path overrides the uploaded one.
    status, headers, _ = await get(
        hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}/other.txt", token
    )
    assert status == 200
    assert headers["Content-Disposition"] == 'inline; filename="other.txt"'
    # Control characters in an uploaded name are refused.
    async with hs.client.post(
        f"{V3}/upload", data=b"x", headers=auth(token), params={"filename": "a\nb"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["errcode"] == "M_INVALID_PARAM"


async def test_encrypted_attachment_round_trip_with_nio(hs: Harness) -> None:
    """A file encrypted as Matrix clients do, uploaded, downloaded and decrypted."""
    _, token = await hs.register()
    plaintext = os.urandom(200_000) + "a file with ünïcode".encode()
    ciphertext, keys = encrypt_attachment(plaintext)
    mxc = await upload(hs, token, ciphertext, "application/octet-stream", "secret.bin")
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert status == 200
    assert body == ciphertext
    decrypted = decrypt_attachment(body, keys["key"]["k"], keys["hashes"]["sha256"], keys["iv"])
    assert decrypted == plaintext


async def test_identical_content_is_stored_once(hs: Harness) -> None:
    _, alice = await hs.register()
    _, bob = await hs.register()
    data = os.urandom(5000)
    one = await upload(hs, alice, data)
    two = await upload(hs, bob, data, "text/plain", "same.txt")
    assert one != two
    assert len(_files_in(hs)) == 1
    _, headers, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(two)}", bob)
    assert body == data and headers["Content-Type"].startswith("text/plain")
    # Deleting one keeps the shared file; deleting the other removes it.
    assert await hs.services.media.delete_media(hs.server_name, media_id(one))
    assert len(_files_in(hs)) == 1
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(two)}", bob)
    assert status == 200 and body == data
    assert await hs.services.media.delete_media(hs.server_name, media_id(two))
    assert _files_in(hs) == []
    assert not await hs.services.media.delete_media(hs.server_name, media_id(two))


async def test_authentication_required(hs: Harness) -> None:
    _, token = await hs.register()
    mxc = await upload(hs, token, b"data")
    for path in (
        f"{V1}/download/{hs.server_name}/{media_id(mxc)}",
        f"{V1}/thumbnail/{hs.server_name}/{media_id(mxc)}?width=32&height=32",
        f"{V1}/config",
        f"{V1}/preview_url?url=https://example.org",
        f"{V3}/config",
    ):
        status, _, body = await get(hs, path)
        assert status == 401, path
    status, body = await hs.request("POST", f"{V3}/upload", raw=b"x")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await hs.request("GET", f"{V1}/config", "not-a-token")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"


async def test_config(make_hs: MakeHs) -> None:
    hs = await make_hs(max_upload_size="1M")
    _, token = await hs.register()
    for path in (f"{V1}/config", f"{V3}/config"):
        status, body = await hs.request("GET", path, token)
        assert status == 200
        assert body == {"m.upload.size": 1024 * 1024}


async def test_upload_size_limit(make_hs: MakeHs) -> None:
    hs = await make_hs(max_upload_size=10_000, max_request_body_size=2048)
    _, token = await hs.register()
    # Larger than the JSON body limit but within the upload limit: accepted.
    mxc = await upload(hs, token, b"a" * 10_000)
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(mxc)}", token)
    assert status == 200 and len(body) == 10_000
    # Declared too large.
    status, body = await hs.request("POST", f"{V3}/upload", token, raw=b"a" * 10_001)
    assert status == 413 and body["errcode"] == "M_TOO_LARGE"

    # Streamed without a length: cut off at the limit.
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"b" * 1000

    async with hs.client.post(f"{V3}/upload", data=stream(), headers=auth(token)) as resp:
        assert resp.status == 413
        assert (await resp.json())["errcode"] == "M_TOO_LARGE"
    tmp = hs.services.media.files.root / "tmp"
    assert list(tmp.iterdir()) == []  # the partial upload is gone


async def test_upload_quota(make_hs: MakeHs) -> None:
    hs = await make_hs(media_upload_limits=[{"time_period": "1h", "max_size": 3000}])
    _, alice = await hs.register()
    _, bob = await hs.register()
    await upload(hs, alice, b"a" * 2000)
    await upload(hs, alice, b"b" * 1000)
    status, body = await hs.request("POST", f"{V3}/upload", alice, raw=b"c")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    await upload(hs, bob, b"d" * 3000)  # per user
    # What a client shows the user before an upload is refused (MSC4034 + the limits).
    usage = "/_matrix/media/unstable/org.matrix.msc4034/usage"
    status, body = await hs.request("GET", usage, alice)
    assert status == 200 and body["m.storage.used"] == 3000 and body["m.storage.files"] == 2
    assert body["org.matrix.msc4034.storage.used"] == 3000
    assert body["io.starling.upload_limits"] == [
        {"time_period_ms": 3_600_000, "max_size": 3000, "used": 3000}
    ]
    status, _ = await hs.request("GET", usage)
    assert status == 401
    # The client prints it after a file-backup push.
    assert quota_line(body) == "storage: 2.9 KiB in 2 files; quota 2.9 KiB per 1 h, 2.9 KiB used"
    assert quota_line({**body, "io.starling.upload_limits": []}) == ""
    # The quota counts what was uploaded within the period only.
    clock = hs.services.media._clock
    hs.services.media._clock = lambda: clock() + 3601
    await upload(hs, alice, b"e" * 3000)
    status, body = await hs.request("GET", usage, alice)
    assert body["m.storage.used"] == 6000 and body["io.starling.upload_limits"][0]["used"] == 3000


async def test_unauthenticated_endpoints_are_frozen(make_hs: MakeHs, tmp_path: Path) -> None:
    store = str(tmp_path / "shared-media")
    # Media uploaded before the switch stays reachable without a token...
    before = await make_hs(enable_authenticated_media=False, media_store_path=store)
    _, token = await before.register()
    old = await upload(before, token, b"old media", "text/plain")
    status, _, body = await get(before, f"{V3}/download/{before.server_name}/{media_id(old)}")
    assert status == 200 and body == b"old media"

    # ...the same database with the switch on: old media still served, new media not.
    after = await make_hs(enable_authenticated_media=True, media_store_path=store)
    _, token2 = await after.register()
    new = await upload(after, token2, b"new media", "text/plain")
    status, _, body = await get(after, f"{V3}/download/{after.server_name}/{media_id(old)}")
    assert status == 200 and body == b"old media"
    for path in (
        f"{V3}/download/{after.server_name}/{media_id(new)}",
        f"/_matrix/media/r0/download/{after.server_name}/{media_id(new)}/name.txt",
        f"{V3}/thumbnail/{after.server_name}/{media_id(new)}?width=32&height=32",
    ):
        status, _, body = await get(after, path, token2)  # a token does not unfreeze
        assert status == 404, path
        assert b"M_NOT_FOUND" in body
    status, _, body = await get(after, f"{V1}/download/{after.server_name}/{media_id(new)}", token2)
    assert status == 200 and body == b"new media"
    # Legacy downloads also carry the safety headers.
    _, headers, _ = await get(after, f"{V3}/download/{after.server_name}/{media_id(old)}")
    assert headers["Content-Security-Policy"] == CSP
    assert headers["Cache-Control"].startswith("public")


async def test_malformed_ids_are_refused(hs: Harness) -> None:
    _, token = await hs.register()
    await upload(hs, token, b"secret")
    bad_paths = [
        f"{V1}/download/{hs.server_name}/..%2F..%2Fetc%2Fpasswd",
        f"{V1}/download/{hs.server_name}/abc%00def",
        f"{V1}/download/{hs.server_name}/abc.def",
        f"{V1}/download/{hs.server_name}/%2E%2E",
        f"{V1}/download/{hs.server_name}/../../etc/passwd",
        f"{V1}/download/..%2F..%2Fetc/passwd",
        f"{V1}/download/bad%00server/abcdef",
        f"{V1}/thumbnail/{hs.server_name}/..%2Fx?width=1&height=1",
        f"{V3}/download/{hs.server_name}/{'a' * 300}",
    ]
    for path in bad_paths:
        async with hs.client.get(path, headers=auth(token)) as resp:
            assert resp.status in (400, 404), (path, resp.status)
            assert (await resp.json())["errcode"] in (
                "M_NOT_FOUND",
                "M_INVALID_PARAM",
                "M_UNRECOGNIZED",
            )
    status, body = await hs.request(
        "PUT", f"{V3}/upload/{hs.server_name}/..%2Fescape", token, raw=b"x"
    )
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_unknown_and_unreachable_media(hs: Harness) -> None:
    _, token = await hs.register()
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/doesNotExist", token)
    assert status == 404 and b"M_NOT_FOUND" in body
    # The server of other.example cannot be resolved in the tests: 502, not a false 404.
    status, _, body = await get(hs, f"{V1}/download/other.example/someMedia", token)
    assert status == 502 and b"M_UNKNOWN" in body
    # The frozen unauthenticated endpoints never reach out (nothing new is theirs).
    for path in (
        f"{V3}/download/other.example/m",
        f"{V3}/download/other.example/m?allow_remote=false",
    ):
        status, _, body = await get(hs, path)
        assert status == 404 and b"M_NOT_FOUND" in body


class _Origin:
    """A stand-in for federation: serves one remote media."""

    def __init__(self) -> None:
        self.calls = 0

    @asynccontextmanager
    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> AsyncIterator[RemoteMedia | None]:
        self.calls += 1
        if (server_name, media_id) != ("other.example", "remote1"):
            yield None
            return

        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.05)  # the others wait on the first fetch
            yield b"remote "
            yield b"bytes"

        yield RemoteMedia("text/plain", "r.txt", chunks())


async def test_remote_media_goes_through_the_fetcher_and_is_cached(hs: Harness) -> None:
    _, token = await hs.register()
    origin = _Origin()
    hs.services.media.remote = origin
    path = f"{V1}/download/other.example/remote1"
    results = await asyncio.gather(*(get(hs, path, token) for _ in range(3)))
    for status, headers, body in results:
        assert status == 200 and body == b"remote bytes"
        assert headers["Content-Disposition"] == 'inline; filename="r.txt"'
    assert origin.calls == 1  # fetched once, then served from the cache
    status, _, _ = await get(hs, f"{V1}/download/other.example/missing", token)
    assert status == 404
    # Not asked again at once: the origin's answer is remembered for a while.
    status, _, _ = await get(hs, f"{V1}/thumbnail/other.example/missing?width=5&height=5", token)
    assert status == 404 and origin.calls == 2
    # The old endpoints, frozen by enable_authenticated_media, never reach out.
    status, _, _ = await get(hs, f"{V3}/download/other.example/remote2")
    assert status == 404 and origin.calls == 2


async def test_remote_media_on_the_old_endpoints_without_the_freeze(make_hs: MakeHs) -> None:
    hs = await make_hs(enable_authenticated_media=False)
    origin = _Origin()
    hs.services.media.remote = origin
    status, _, _ = await get(hs, f"{V3}/download/other.example/remote1?allow_remote=false")
    assert status == 404 and origin.calls == 0
    status, _, body = await get(hs, f"{V3}/download/other.example/remote1")
    assert status == 200 and body == b"remote bytes" and origin.calls == 1


async def test_quarantine_and_user_deletion(hs: Harness) -> None:
    alice, token = await hs.register()
    _, bob = await hs.register()
    a1 = await upload(hs, token, b"one")
    a2 = await upload(hs, token, b"two")
    b1 = await upload(hs, bob, b"two")  # shares a file with a2
    media = hs.services.media
    assert await media.quarantine_media(hs.server_name, media_id(a1))
    status, _, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(a1)}", token)
    assert status == 404
    status, _, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(a2)}", token)
    assert status == 200
    assert await media.quarantine_user_media(alice) == 1  # a1 already was
    status, _, _ = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(a2)}", token)
    assert status == 404
    info = await media.get_media_info(hs.server_name, media_id(a2))
    assert info is not None and info.quarantined_by == "admin"

    deleted = await media.delete_user_media(alice)
    assert sorted(deleted) == sorted([media_id(a1), media_id(a2)])
    assert len(_files_in(hs)) == 1  # "two" is still bob's
    status, _, body = await get(hs, f"{V1}/download/{hs.server_name}/{media_id(b1)}", bob)
    assert status == 200 and body == b"two"


async def test_concurrent_uploads_cannot_both_pass_the_quota(make_hs: MakeHs) -> None:
    hs = await make_hs(media_upload_limits=[{"time_period": "1h", "max_size": 3000}])
    alice_id, alice = await hs.register()
    store = hs.services.media.store
    insert = store.insert_media
    second_checked = asyncio.Event()
    checks = 0
    count = store.uploaded_bytes_since

    async def counting(user_id: str, since: int) -> int:
        # The second upload checks twice (its declared length, then what arrived).
        nonlocal checks
        used = await count(user_id, since)
        if second:
            checks += 1
            if checks == 2:
                second_checked.set()
        return used

    second: list[asyncio.Task[tuple[int, Any]]] = []

    async def insert_while_another_upload_runs(row: Any) -> Any:
        if not second:
            # The first upload passed its quota check; the second runs now, before the
            # first's row exists. It must not pass a check that counts neither.
            second.append(
                asyncio.create_task(hs.request("POST", f"{V3}/upload", alice, raw=b"b" * 2000))
            )
            # Until the second reaches its own check; with the fix it waits for ours, so
            # this only bounds the wait (no assertion on time).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(second_checked.wait(), timeout=3)
        return await insert(row)

    store.insert_media = insert_while_another_upload_runs  # type: ignore[method-assign]
    store.uploaded_bytes_since = counting  # type: ignore[method-assign]
    status, _ = await hs.request("POST", f"{V3}/upload", alice, raw=b"a" * 2000)
    assert status == 200
    status, body = await second[0]
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert await count(alice_id, 0) == 2000


class _BigOrigin:
    """An origin whose media is larger than this server accepts (and names no length)."""

    @asynccontextmanager
    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> AsyncIterator[RemoteMedia | None]:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        yield RemoteMedia("text/plain", None, chunks())


async def test_remote_media_over_the_size_limit_is_not_cached(make_hs: MakeHs) -> None:
    hs = await make_hs(max_upload_size="4K")
    _, token = await hs.register()
    hs.services.media.remote = _BigOrigin()
    status, _, body = await get(hs, f"{V1}/download/other.example/big", token)
    assert status == 502 and b"M_TOO_LARGE" in body
    assert await hs.services.media.get_media_info("other.example", "big") is None
    assert not list((hs.services.media.files.root / "tmp").iterdir())  # nothing left staged


async def test_remote_cache_retention(make_hs: MakeHs) -> None:
    hs = await make_hs(media_retention={"remote_media_lifetime": "1d"})
    _, token = await hs.register()
    local = media_id(await upload(hs, token, b"mine"))
    origin = _Origin()
    media = hs.services.media
    media.remote = origin
    path = f"{V1}/download/other.example/remote1"
    status, _, body = await get(hs, path, token)
    assert status == 200 and body == b"remote bytes" and origin.calls == 1
    info = await media.get_media_info("other.example", "remote1")
    assert info is not None and info.sha256 is not None
    # Used recently: kept.
    assert await media.purge_remote_cache(info.created_ts - 1) == 0
    # Unused since before the cut-off: deleted with its file; local media stays.
    assert await media.purge_remote_cache(media._now_ms() + 1) == 1
    assert await media.get_media_info("other.example", "remote1") is None
    assert not await media.files.exists(info.sha256)
    assert await media.get_media_info(hs.server_name, local) is not None
    # Asked for again: fetched again.
    status, _, body = await get(hs, path, token)
    assert status == 200 and body == b"remote bytes" and origin.calls == 2
    # The hourly purge runs from start() until close() (recent media: nothing to purge).
    media.start()
    await asyncio.sleep(0.05)
    assert await media.get_media_info("other.example", "remote1") is not None


def test_media_retention_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="local_media_lifetime"):
        make_test_config(tmp_path, media_retention={"local_media_lifetime": "30d"})
    with pytest.raises(ConfigError, match="remote_media_lifetime"):
        make_test_config(tmp_path, media_retention={"remote_media_lifetime": "soon"})
    config = make_test_config(tmp_path, media_retention={"remote_media_lifetime": "90d"})
    assert config.media_retention.remote_media_lifetime == "90d"


class _AnyOrigin:
    """Serves every remote media ID: 12 bytes each."""

    def __init__(self) -> None:
        self.calls = 0

    @asynccontextmanager
    async def fetch(
        self, server_name: str, media_id: str, *, max_bytes: int, timeout_ms: int
    ) -> AsyncIterator[RemoteMedia | None]:
        self.calls += 1

        async def chunks() -> AsyncIterator[bytes]:
            yield b"remote bytes"

        yield RemoteMedia("text/plain", None, chunks())


async def test_remote_downloads_limited_per_address(make_hs: MakeHs) -> None:
    hs = await make_hs(remote_media_download_burst_count="20", remote_media_download_per_second="1")
    _, token = await hs.register()
    origin = _AnyOrigin()
    hs.services.media.remote = origin
    # 12 bytes, then 12 more (overdrawing the 20), then refused until it refills.
    for name in ("one", "two"):
        status, _, body = await get(hs, f"{V1}/download/other.example/{name}", token)
        assert status == 200 and body == b"remote bytes"
    status, _, body = await get(hs, f"{V1}/download/other.example/three", token)
    assert status == 429 and b"M_LIMIT_EXCEEDED" in body and origin.calls == 2
    # What is cached is served as before.
    status, _, body = await get(hs, f"{V1}/download/other.example/one", token)
    assert status == 200 and origin.calls == 2
