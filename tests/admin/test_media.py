"""Admin API, media: Synapse's paths and shapes (docs/admin_api/media_admin_api.md), both
engines: listing, quarantine and protection (quarantined media is no longer served),
deletion that removes rows and files, the remote-media cache purge."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from starling.storage.media import NewMedia
from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
C = "/_matrix/client/v3"
HS = "test.local"

MEDIA_ENDPOINTS = [
    ("GET", f"{V1}/users/@bob:{HS}/media"),
    ("DELETE", f"{V1}/users/@bob:{HS}/media"),
    ("POST", f"{V1}/media/delete?before_ts=1"),
    ("POST", f"{V1}/media/{HS}/delete?before_ts=1"),
    ("GET", f"{V1}/media/{HS}/abc"),
    ("DELETE", f"{V1}/media/{HS}/abc"),
    ("POST", f"{V1}/media/quarantine/{HS}/abc"),
    ("POST", f"{V1}/media/unquarantine/{HS}/abc"),
    ("POST", f"{V1}/room/!r:{HS}/media/quarantine"),
    ("POST", f"{V1}/quarantine_media/!r:{HS}"),
    ("POST", f"{V1}/user/@bob:{HS}/media/quarantine"),
    ("POST", f"{V1}/media/protect/abc"),
    ("POST", f"{V1}/media/unprotect/abc"),
    ("GET", f"{V1}/room/!r:{HS}/media"),
    ("POST", f"{V1}/purge_media_cache?before_ts=1"),
]


async def upload(hs: Harness, token: str, data: bytes, name: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    params = {"filename": name} if name else None
    async with hs.client.post(
        "/_matrix/media/v3/upload", data=data, headers=headers, params=params
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        mxc: str = body["content_uri"]
        return mxc.rsplit("/", 1)[1]


async def download_status(hs: Harness, token: str, media_id: str) -> int:
    async with hs.client.get(
        f"/_matrix/client/v1/media/download/{HS}/{media_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        await resp.read()
        return resp.status


def stored_files(hs: Harness) -> int:
    root = Path(hs.services.config.media_store_path)
    return sum(1 for p in root.rglob("*") if p.is_file())


async def test_media_endpoints_refuse_non_admins(hs: Harness) -> None:
    _, plain = await hs.register("plain")
    for method, path in MEDIA_ENDPOINTS:
        status, resp = await hs.request(method, path, plain, {})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), (method, path)


async def test_list_and_delete_user_media(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    ids = [await upload(hs, bob_token, b"x" * n, f"f{n}.bin") for n in (30, 10, 20)]
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/media", admin)
    assert status == 200, resp
    assert resp["total"] == 3 and "next_token" not in resp
    assert [m["media_id"] for m in resp["media"]] == ids[::-1]  # newest first
    first = resp["media"][0]
    assert first["media_length"] == 20 and first["upload_name"] == "f20.bin"
    assert first["quarantined_by"] is None and first["safe_from_quarantine"] is False
    status, resp = await hs.request(
        "GET", f"{V1}/users/{bob}/media", admin, params={"order_by": "media_length", "limit": "2"}
    )
    assert [m["media_length"] for m in resp["media"]] == [10, 20] and resp["next_token"] == 2
    for params in ({"order_by": "sha256"}, {"dir": "up"}, {"limit": "-1"}):
        status, resp = await hs.request("GET", f"{V1}/users/{bob}/media", admin, params=params)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), params
    status, resp = await hs.request("GET", f"{V1}/users/@bob:elsewhere.org/media", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    files = stored_files(hs)
    status, resp = await hs.request(
        "DELETE",
        f"{V1}/users/{bob}/media",
        admin,
        params={"order_by": "media_length", "limit": "1"},
    )
    assert (status, resp) == (200, {"deleted_media": [ids[1]], "total": 1})
    assert stored_files(hs) == files - 1
    status, resp = await hs.request("DELETE", f"{V1}/users/{bob}/media", admin)
    assert resp["total"] == 2 and stored_files(hs) == files - 3
    assert await hs.services.db.fetch_val("SELECT COUNT(*) FROM media WHERE user_id = ?", bob) == 0


async def test_quarantine_and_protect(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    one = await upload(hs, bob_token, b"first")
    two = await upload(hs, bob_token, b"second")
    assert await download_status(hs, bob_token, one) == 200
    status, resp = await hs.request("POST", f"{V1}/media/quarantine/{HS}/{one}", admin, {})
    assert (status, resp) == (200, {})
    assert await download_status(hs, bob_token, one) == 404
    status, resp = await hs.request("GET", f"{V1}/media/{HS}/{one}", admin)
    assert resp["media_info"]["quarantined_by"] == f"@root:{HS}"
    assert resp["media_info"]["user_id"] == bob and resp["media_info"]["media_origin"] == HS
    status, resp = await hs.request("POST", f"{V1}/media/unquarantine/{HS}/{one}", admin, {})
    assert status == 200
    assert await download_status(hs, bob_token, one) == 200
    # protected media is not quarantined, one by one or by user
    status, resp = await hs.request("POST", f"{V1}/media/protect/{one}", admin, {})
    assert (status, resp) == (200, {})
    status, _ = await hs.request("POST", f"{V1}/media/quarantine/{HS}/{one}", admin, {})
    assert status == 200 and await download_status(hs, bob_token, one) == 200
    status, resp = await hs.request("POST", f"{V1}/user/{bob}/media/quarantine", admin, {})
    assert (status, resp) == (200, {"num_quarantined": 1})
    assert await download_status(hs, bob_token, two) == 404
    assert await download_status(hs, bob_token, one) == 200
    status, resp = await hs.request("POST", f"{V1}/media/unprotect/{one}", admin, {})
    assert status == 200
    status, resp = await hs.request("GET", f"{V1}/media/{HS}/{one}", admin)
    assert resp["media_info"]["safe_from_quarantine"] is False
    status, resp = await hs.request("POST", f"{V1}/media/protect/nothing", admin, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V1}/media/{HS}/nothing", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_room_media(hs: Harness, admin: str) -> None:
    _, bob_token = await hs.register("bob")
    pic = await upload(hs, bob_token, b"picture")
    room = await hs.create_room(bob_token)
    content = {
        "msgtype": "m.image",
        "body": "pic",
        "url": f"mxc://{HS}/{pic}",
        "info": {"thumbnail_url": "mxc://remote.example/thumb1"},
    }
    status, _ = await hs.request(
        "PUT", f"{C}/rooms/{room}/send/m.room.message/t1", bob_token, content
    )
    assert status == 200
    status, resp = await hs.request("GET", f"{V1}/room/{room}/media", admin)
    assert resp == {"local": [f"mxc://{HS}/{pic}"], "remote": ["mxc://remote.example/thumb1"]}
    status, resp = await hs.request("POST", f"{V1}/room/{room}/media/quarantine", admin, {})
    assert (status, resp) == (200, {"num_quarantined": 1})  # the remote one is not cached
    assert await download_status(hs, bob_token, pic) == 404
    status, resp = await hs.request("GET", f"{V1}/room/not-a-room/media", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_delete_media(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    doomed = await upload(hs, bob_token, b"doomed")
    files = stored_files(hs)
    status, resp = await hs.request("DELETE", f"{V1}/media/{HS}/{doomed}", admin)
    assert (status, resp) == (200, {"deleted_media": [doomed], "total": 1})
    assert stored_files(hs) == files - 1
    assert await download_status(hs, bob_token, doomed) == 404
    status, resp = await hs.request("DELETE", f"{V1}/media/{HS}/{doomed}", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("DELETE", f"{V1}/media/remote.example/abc", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    # by date and size; an avatar is kept unless keep_profiles=false
    small = await upload(hs, bob_token, b"s")
    big = await upload(hs, bob_token, b"b" * 100)
    avatar = await upload(hs, bob_token, b"a" * 100)
    status, _ = await hs.request(
        "PUT", f"{C}/profile/{bob}/avatar_url", bob_token, {"avatar_url": f"mxc://{HS}/{avatar}"}
    )
    assert status == 200
    later = str(int(time.time() * 1000) + 60_000)
    status, resp = await hs.request(
        "POST", f"{V1}/media/delete", admin, {}, params={"before_ts": later, "size_gt": "50"}
    )
    assert (status, resp) == (200, {"deleted_media": [big], "total": 1})
    status, resp = await hs.request(
        "POST",
        f"{V1}/media/{HS}/delete",
        admin,
        {},
        params={"before_ts": later, "keep_profiles": "false"},
    )
    assert sorted(resp["deleted_media"]) == sorted([small, avatar])
    status, resp = await hs.request("POST", f"{V1}/media/delete", admin, {})
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")
    status, resp = await hs.request(
        "POST", f"{V1}/media/delete", admin, {}, params={"before_ts": "yesterday"}
    )
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_purge_remote_media_cache(hs: Harness, admin: str) -> None:
    store = hs.services.media.store
    data = b"cached remote bytes"
    sha = hashlib.sha256(data).hexdigest()
    old: dict[str, Any] = {
        "server_name": "remote.example",
        "user_id": None,
        "content_type": "text/plain",
        "upload_name": None,
        "media_length": len(data),
        "sha256": sha,
        "authenticated": True,
    }
    await store.insert_media(NewMedia(media_id="old", created_ts=1000, **old))
    await store.insert_media(NewMedia(media_id="fresh", created_ts=int(time.time() * 1000), **old))
    status, resp = await hs.request(
        "POST", f"{V1}/purge_media_cache", admin, {}, params={"before_ts": "5000"}
    )
    assert (status, resp) == (200, {"deleted": 1})
    assert await store.get_media("remote.example", "old") is None
    assert await store.get_media("remote.example", "fresh") is not None
    status, resp = await hs.request("POST", f"{V1}/purge_media_cache", admin, {})
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


@pytest.mark.parametrize("path", [f"{V1}/users/@ghost:{HS}/media"])
async def test_unknown_user_has_no_media(hs: Harness, admin: str, path: str) -> None:
    status, resp = await hs.request("GET", path, admin)
    assert (status, resp) == (200, {"media": [], "total": 0})
