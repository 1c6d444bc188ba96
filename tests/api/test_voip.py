"""/voip/turnServer and /thirdparty: real credentials when configured, honest empties."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

from starling.storage import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"


async def test_no_turn_configured(hs: Harness) -> None:
    _, token = await hs.register()
    assert await hs.request("GET", f"{V3}/voip/turnServer", token) == (200, {})
    status, body = await hs.request("GET", f"{V3}/voip/turnServer", None)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"


async def test_turn_shared_secret_credentials(database: Database, tmp_path: Path) -> None:
    async with make_harness(
        database,
        tmp_path,
        turn_uris=["turn:turn.example.org:3478?transport=udp"],
        turn_shared_secret="s3cret",
        turn_user_lifetime="2h",
    ) as hs:
        user_id, token = await hs.register()
        status, body = await hs.request("GET", f"{V3}/voip/turnServer", token)
        assert status == 200
        assert body["uris"] == ["turn:turn.example.org:3478?transport=udp"]
        assert body["ttl"] == 7200
        expiry, _, who = body["username"].partition(":")
        assert who == user_id
        assert abs(int(expiry) - (time.time() + 7200)) < 60
        expected = hmac.new(b"s3cret", body["username"].encode(), hashlib.sha1).digest()
        assert base64.b64decode(body["password"]) == expected


async def test_thirdparty_without_bridges(hs: Harness) -> None:
    _, token = await hs.register()
    assert await hs.request("GET", f"{V3}/thirdparty/protocols", token) == (200, {})
    status, body = await hs.request("GET", f"{V3}/thirdparty/protocol/irc", token)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_turn_refused_to_guests_unless_allowed(database: Database, tmp_path: Path) -> None:
    async with make_harness(
        database,
        tmp_path,
        turn_uris=["turn:turn.example.org"],
        turn_username="u",
        turn_password="p",
        turn_allow_guests=False,
        allow_guest_access=True,
    ) as hs:
        status, guest = await hs.request("POST", f"{V3}/register?kind=guest", None, {})
        assert status == 200, guest
        status, body = await hs.request("GET", f"{V3}/voip/turnServer", guest["access_token"])
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        _, token = await hs.register()
        status, body = await hs.request("GET", f"{V3}/voip/turnServer", token)
        assert status == 200 and (body["username"], body["password"]) == ("u", "p")
