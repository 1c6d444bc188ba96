"""Security review: regression tests for bugs found in accounts, E2EE and media (both
engines), and probes of attacks that are refused as they should be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from starling.storage import Database
from tests.e2ee.support import CrossSigning, Device, new_device, upload_ok
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
MEDIA_V3 = "/_matrix/media/v3"
PASSWORD = "correct horse battery staple"
_FAST = {"per_second": 1000, "burst_count": 1000}
OPEN = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "rc_registration": _FAST,
    "rc_login": {"address": _FAST, "account": _FAST, "failed_attempts": _FAST},
}

MakeHs = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_hs(database: Database, tmp_path: Path) -> AsyncIterator[MakeHs]:
    async with AsyncExitStack() as stack:
        count = 0

        async def factory(**overrides: Any) -> Harness:
            nonlocal count
            count += 1
            where = tmp_path / f"hs{count}"
            where.mkdir()
            harness = await stack.enter_async_context(
                make_harness(database, where, **{**OPEN, **overrides})
            )
            stack.push_async_callback(harness.services.media.close)
            return harness

        yield factory


async def _register(hs: Harness, username: str, **extra: Any) -> dict[str, Any]:
    body = {"username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    status, resp = await hs.request("POST", f"{V3}/register", body={**body, **extra})
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def _login(hs: Harness, user: str, **extra: Any) -> dict[str, Any]:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": PASSWORD,
    }
    status, resp = await hs.request("POST", f"{V3}/login", body={**body, **extra})
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


def _password_auth(user_id: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": PASSWORD,
    }
    if session is not None:
        auth["session"] = session
    return auth


# --- accounts -----------------------------------------------------------------------------


async def test_tokens_die_with_every_invalidation_path(make_hs: MakeHs) -> None:
    hs = await make_hs()
    reg = await _register(hs, "alice", refresh_token=True)
    user = reg["user_id"]
    second = await _login(hs, "alice")
    third = await _login(hs, "alice", refresh_token=True)
    for t in (reg["access_token"], second["access_token"], third["access_token"]):
        assert (await hs.request("GET", f"{V3}/account/whoami", t))[0] == 200
    # Logout: the token and its refresh token die.
    assert (await hs.request("POST", f"{V3}/logout", reg["access_token"], {}))[0] == 200
    assert (await hs.request("GET", f"{V3}/account/whoami", reg["access_token"]))[0] == 401
    status, _ = await hs.request(
        "POST", f"{V3}/refresh", body={"refresh_token": reg["refresh_token"]}
    )
    assert status == 401
    # Password change logging out other devices kills the cached third token and its
    # refresh token.
    status, resp = await hs.request(
        "POST",
        f"{V3}/account/password",
        second["access_token"],
        {"new_password": PASSWORD, "auth": _password_auth(user)},
    )
    assert status == 200, resp
    assert (await hs.request("GET", f"{V3}/account/whoami", third["access_token"]))[0] == 401
    status, _ = await hs.request(
        "POST", f"{V3}/refresh", body={"refresh_token": third["refresh_token"]}
    )
    assert status == 401
    # Deactivation.
    status, resp = await hs.request(
        "POST", f"{V3}/account/deactivate", second["access_token"], {"auth": _password_auth(user)}
    )
    assert status == 200, resp
    assert (await hs.request("GET", f"{V3}/account/whoami", second["access_token"]))[0] == 401


async def test_uia_session_is_bound_to_its_user(make_hs: MakeHs) -> None:
    hs = await make_hs()
    a = await _register(hs, "alice")
    b = await _register(hs, "bob")
    # Alice completes the password stage for deleting her devices...
    status, resp = await hs.request(
        "POST", f"{V3}/delete_devices", a["access_token"], {"devices": ["X"]}
    )
    assert status == 401
    session = resp["session"]
    # ...and Bob tries to ride on her session to delete his own or hers.
    status, resp = await hs.request(
        "POST",
        f"{V3}/delete_devices",
        b["access_token"],
        {"devices": [b["device_id"]], "auth": {"session": session}},
    )
    assert status in (400, 401, 403), resp
    assert (await hs.request("GET", f"{V3}/account/whoami", b["access_token"]))[0] == 200


# --- E2EE ---------------------------------------------------------------------------------


async def test_signature_upload_with_malformed_signatures_is_400(make_hs: MakeHs) -> None:
    hs = await make_hs()
    dev = await new_device(hs, "alice")
    await upload_ok(hs, dev, device_keys=dev.device_keys())
    cs = CrossSigning(dev.user_id)
    status, resp = await hs.request(
        "POST",
        f"{V3}/keys/device_signing/upload",
        dev.token,
        {**cs.upload_body(), "auth": _password_auth(dev.user_id)},
    )
    assert status == 200, resp
    master = cs.key_object("master")
    master_id = cs.key_id(cs.master)
    bads: list[Any] = [[], "x", 1, {dev.user_id: "x"}]
    for bad in bads:
        body = {dev.user_id: {master_id.split(":", 1)[1]: {**master, "signatures": bad}}}
        status, resp = await hs.request("POST", f"{V3}/keys/signatures/upload", dev.token, body)
        assert status in (200, 400), (bad, status, resp)
        # device signature path
        body = {dev.user_id: {dev.device_id: {**dev.device_keys(), "signatures": bad}}}
        status, resp = await hs.request("POST", f"{V3}/keys/signatures/upload", dev.token, body)
        assert status in (200, 400), (bad, status, resp)


async def test_one_time_key_claims_across_users_are_exclusive(make_hs: MakeHs) -> None:
    hs = await make_hs()
    target = await new_device(hs, "target")
    await upload_ok(
        hs, target, device_keys=target.device_keys(), one_time_keys=target.one_time_keys(5)
    )
    claimers = [await new_device(hs, f"claimer{i}") for i in range(10)]

    async def claim(d: Device) -> Any:
        status, resp = await hs.request(
            "POST",
            f"{V3}/keys/claim",
            d.token,
            {"one_time_keys": {target.user_id: {target.device_id: "signed_curve25519"}}},
        )
        assert status == 200, resp
        return resp["one_time_keys"].get(target.user_id, {}).get(target.device_id, {})

    got = await asyncio.gather(*(claim(d) for d in claimers))
    ids = [k for g in got for k in g]
    assert len(ids) == 5 and len(set(ids)) == 5


# --- media ----------------------------------------------------------------------------------


async def _upload(hs: Harness, token: str, data: bytes, ctype: str, **params: str) -> str:
    async with hs.client.post(
        f"{MEDIA_V3}/upload",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
        params=params or None,
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["content_uri"]).rsplit("/", 1)[1]


async def test_dangerous_types_and_names_are_not_served_inline(make_hs: MakeHs) -> None:
    hs = await make_hs()
    _, token = await hs.register("alice")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    for ctype in (
        "image/svg+xml",
        "text/html",
        "text/html; charset=utf-8",
        "TEXT/HTML",
        "application/xhtml+xml",
        "text/xml",
    ):
        mid = await _upload(hs, token, svg, ctype, filename='a";x=".svg')
        # A file name with CR LF never reaches a header: control characters in a path
        # are refused outright.
        evil = f"/_matrix/client/v1/media/download/{hs.server_name}/{mid}/x%0d%0aX-Evil:%201"
        async with hs.client.get(evil, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 400 and "X-Evil" not in r.headers
            assert (await r.json())["errcode"] == "M_INVALID_PARAM"
        for path in (
            f"/_matrix/client/v1/media/download/{hs.server_name}/{mid}",
            f"/_matrix/client/v1/media/download/{hs.server_name}/{mid}/x%22%3B%20y.svg",
        ):
            async with hs.client.get(path, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
                assert r.headers["Content-Disposition"].startswith("attachment"), ctype
                assert "X-Evil" not in r.headers
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert "sandbox" in r.headers["Content-Security-Policy"]


async def test_media_path_traversal_is_refused(make_hs: MakeHs) -> None:
    hs = await make_hs()
    _, token = await hs.register("alice")
    for server, media in (
        ("..", "x"),
        ("test.local", ".."),
        ("test.local%2F..", "x"),
        ("test.local", "..%2F..%2Fetc"),
        ("test.local", "a%00b"),
        ("test.local", "\u0430bc"),
    ):
        status, _ = await hs.request(
            "GET", f"/_matrix/client/v1/media/download/{server}/{media}", token
        )
        assert status in (400, 404), (server, media, status)


async def test_thumbnail_of_non_image_is_a_clean_error(make_hs: MakeHs) -> None:
    hs = await make_hs()
    _, token = await hs.register("alice")
    mid = await _upload(hs, token, b"<html>hi</html>", "image/png")
    status, resp = await hs.request(
        "GET",
        f"/_matrix/client/v1/media/thumbnail/{hs.server_name}/{mid}",
        token,
        params={"width": "32", "height": "32"},
    )
    assert 400 <= status < 500, (status, resp)


async def test_chunked_upload_over_the_limit_is_413(make_hs: MakeHs) -> None:
    hs = await make_hs(max_upload_size="1K")
    _, token = await hs.register("alice")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 512

    async with hs.client.post(
        f"{MEDIA_V3}/upload",
        data=body(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 413, await resp.text()


async def test_quarantined_media_is_not_served(make_hs: MakeHs) -> None:
    hs = await make_hs()
    _, token = await hs.register("alice")
    from tests.media.conftest import image_bytes

    mid = await _upload(hs, token, image_bytes("PNG", (64, 64)), "image/png")
    await hs.services.media.quarantine_media(hs.server_name, mid)
    for path, params in (
        (f"/_matrix/client/v1/media/download/{hs.server_name}/{mid}", None),
        (f"{MEDIA_V3}/download/{hs.server_name}/{mid}", None),
        (
            f"/_matrix/client/v1/media/thumbnail/{hs.server_name}/{mid}",
            {"width": "16", "height": "16"},
        ),
    ):
        status, _ = await hs.request("GET", path, token, params=params)
        assert status == 404, path


async def test_async_upload_counts_against_the_quota_when_uploaded(
    make_hs: MakeHs, database: Database
) -> None:
    hs = await make_hs(media_upload_limits=[{"time_period": "1h", "max_size": "1K"}])
    _, token = await hs.register("alice")
    ids = []
    for _ in range(3):
        status, resp = await hs.request("POST", f"{MEDIA_V3}/create", token, {})
        assert status == 200, resp
        ids.append(resp["content_uri"].rsplit("/", 1)[1])
    # The IDs were created two hours ago (well within unused_expiration_time: 24h).
    await database.execute("UPDATE media SET created_ts = created_ts - 7200000")
    results = []
    for mid in ids:
        status, resp = await hs.request(
            "PUT", f"{MEDIA_V3}/upload/{hs.server_name}/{mid}", token, raw=b"x" * 800
        )
        results.append(status)
    assert results[0] == 200
    assert results[1:] == [403, 403], results


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "127.1", "[::ffff:7f00:1]", "0177.0.0.1", "[::ffff:127.0.0.1]"]
)
async def test_preview_url_ssrf_forms(make_hs: MakeHs, host: str) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    hits = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="<title>secret</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        hs = await make_hs(url_preview_enabled=True)
        _, token = await hs.register("alice")
        status, resp = await hs.request(
            "GET",
            "/_matrix/client/v1/media/preview_url",
            token,
            params={"url": f"http://{host}:{server.port}/"},
        )
        assert status in (400, 403), (status, resp)
        assert hits == []
    finally:
        await server.close()


async def test_guests_join_only_rooms_with_guest_access_can_join(make_hs: MakeHs) -> None:
    hs = await make_hs(allow_guest_access=True)
    _, owner = await hs.register("owner")
    public = await hs.create_room(owner, preset="public_chat")  # no m.room.guest_access
    private = await hs.create_room(owner, preset="private_chat")  # can_join by default
    status, resp = await hs.request(
        "PUT",
        f"{V3}/rooms/{private}/state/m.room.join_rules/",
        owner,
        {"join_rule": "public"},
    )
    assert status == 200, resp
    status, resp = await hs.request("POST", f"{V3}/register", params={"kind": "guest"}, body={})
    assert status == 200, resp
    guest = resp["access_token"]
    status, resp = await hs.request("POST", f"{V3}/rooms/{public}/join", guest, {})
    assert status == 403 and resp["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", resp
    status, resp = await hs.request("POST", f"{V3}/join/{public}", guest, {})
    assert status == 403, resp
    status, resp = await hs.request("POST", f"{V3}/rooms/{private}/join", guest, {})
    assert status == 200, resp
    # A regular user still joins the public room.
    _, user = await hs.register("bob")
    assert (await hs.request("POST", f"{V3}/rooms/{public}/join", user, {}))[0] == 200
