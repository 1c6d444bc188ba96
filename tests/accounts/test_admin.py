"""Admin API: shared-secret registration and registration tokens (Synapse's paths)."""

from __future__ import annotations

import time
from typing import Any

from starling.accounts.shared_secret import registration_mac
from tests.accounts.conftest import HarnessFactory, R, login
from tests.support.harness import Harness

ADMIN = "/_synapse/admin/v1"
SECRET = "test-shared-secret"


async def _nonce(hs: Harness) -> str:
    status, resp = await hs.request("GET", f"{ADMIN}/register")
    assert status == 200, resp
    nonce: str = resp["nonce"]
    return nonce


def _body(nonce: str, username: str, password: str, admin: bool, **extra: Any) -> dict[str, Any]:
    mac = registration_mac(SECRET, nonce, username, password, admin, extra.get("user_type"))
    return {
        "nonce": nonce,
        "username": username,
        "password": password,
        "admin": admin,
        "mac": mac,
        **extra,
    }


async def test_shared_secret_registration(ohs: Harness) -> None:
    nonce = await _nonce(ohs)
    body = _body(nonce, "root", "pw", True, displayname="The Admin")
    status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
    assert status == 200, resp
    assert resp["user_id"] == "@root:test.local" and resp["access_token"] and resp["device_id"]
    user = await ohs.services.account_store.get_user("@root:test.local")
    assert user is not None and user.admin
    profile = await ohs.services.profile_store.get_profile("@root:test.local")
    assert profile == {"displayname": "The Admin"}
    # The nonce is single-use.
    status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
    assert (status, resp["errcode"]) == (400, "M_UNKNOWN")
    await login(ohs, "root", "pw")


async def test_shared_secret_wrong_mac_spends_nonce(make_hs: HarnessFactory) -> None:
    async with make_hs(enable_registration=False) as hs:  # independent of open registration
        nonce = await _nonce(hs)
        body = {**_body(nonce, "eve", "pw", False), "mac": "00" * 20}
        status, resp = await hs.request("POST", f"{ADMIN}/register", body=body)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        # A MAC over different details (admin flag flipped) is wrong too.
        nonce = await _nonce(hs)
        body = {**_body(nonce, "eve", "pw", False), "admin": True}
        status, resp = await hs.request("POST", f"{ADMIN}/register", body=body)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        status, resp = await hs.request(
            "POST", f"{ADMIN}/register", body=_body(nonce, "eve", "pw", True)
        )
        assert (status, resp["errcode"]) == (400, "M_UNKNOWN")  # spent by the failed try
        nonce = await _nonce(hs)
        status, resp = await hs.request(
            "POST", f"{ADMIN}/register", body=_body(nonce, "eve", "pw", False)
        )
        assert status == 200
        user = await hs.services.account_store.get_user("@eve:test.local")
        assert user is not None and not user.admin


async def test_shared_secret_bad_requests(ohs: Harness) -> None:
    nonce = await _nonce(ohs)
    good = _body(nonce, "frank", "pw", False)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"nonce": None}, 400, "M_MISSING_PARAM"),
        ({"username": 3}, 400, "M_BAD_JSON"),
        ({"mac": None}, 400, "M_MISSING_PARAM"),
        ({"admin": "yes"}, 400, "M_BAD_JSON"),
        ({"nonce": "made-up"}, 400, "M_UNKNOWN"),
    ]
    for change, status_code, code in cases:
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
        assert (status, resp["errcode"]) == (status_code, code), change
    nonce = await _nonce(ohs)
    body = _body(nonce, "Bad Name", "pw", False)
    status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
    assert (status, resp["errcode"]) == (400, "M_INVALID_USERNAME")
    nonce = await _nonce(ohs)
    body = _body(nonce, "frank", "pw", False, user_type="robot")
    status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    nonce = await _nonce(ohs)
    body = _body(nonce, "frank", "pw", False, user_type="bot")
    status, resp = await ohs.request("POST", f"{ADMIN}/register", body=body)
    assert status == 200, resp
    details = await ohs.services.admin_users.get_user(resp["user_id"])
    assert details["user_type"] == "bot"
    await ohs.register("taken")
    nonce = await _nonce(ohs)
    status, resp = await ohs.request(
        "POST", f"{ADMIN}/register", body=_body(nonce, "taken", "pw", False)
    )
    assert (status, resp["errcode"]) == (400, "M_USER_IN_USE")


async def test_shared_secret_disabled(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_shared_secret=None) as hs:
        status, resp = await hs.request("GET", f"{ADMIN}/register")
        assert status == 400 and "not enabled" in resp["error"]


# -- registration tokens


async def test_registration_tokens_require_admin(ohs: Harness) -> None:
    _, user = await ohs.register("plain")
    for method, path in [
        ("GET", "/registration_tokens"),
        ("POST", "/registration_tokens/new"),
        ("GET", "/registration_tokens/abc"),
        ("PUT", "/registration_tokens/abc"),
        ("DELETE", "/registration_tokens/abc"),
    ]:
        status, resp = await ohs.request(method, f"{ADMIN}{path}", user, {})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path
        status, resp = await ohs.request(method, f"{ADMIN}{path}", None, {})
        assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN"), path


async def test_registration_token_lifecycle(ohs: Harness) -> None:
    _, admin = await ohs.register("boss", admin=True)
    base = f"{ADMIN}/registration_tokens"
    future = int(time.time() * 1000) + 3_600_000
    status, resp = await ohs.request(
        "POST", f"{base}/new", admin, {"token": "abc.DEF_1~-", "uses_allowed": 2}
    )
    assert status == 200, resp
    assert resp == {
        "token": "abc.DEF_1~-",
        "uses_allowed": 2,
        "pending": 0,
        "completed": 0,
        "expiry_time": None,
    }
    status, generated = await ohs.request(
        "POST", f"{base}/new", admin, {"length": 32, "expiry_time": future}
    )
    assert status == 200 and len(generated["token"]) == 32
    assert generated["expiry_time"] == future
    status, default = await ohs.request("POST", f"{base}/new", admin, {})
    assert status == 200 and len(default["token"]) == 16 and default["uses_allowed"] is None
    status, resp = await ohs.request(
        "POST", f"{base}/new", admin, {"token": "used", "uses_allowed": 0}
    )
    assert status == 200

    status, resp = await ohs.request("GET", base, admin)
    assert len(resp["registration_tokens"]) == 4
    status, resp = await ohs.request("GET", f"{base}?valid=false", admin)
    assert [t["token"] for t in resp["registration_tokens"]] == ["used"]
    status, resp = await ohs.request("GET", f"{base}?valid=true", admin)
    assert "used" not in [t["token"] for t in resp["registration_tokens"]]
    status, resp = await ohs.request("GET", f"{base}?valid=maybe", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")

    status, resp = await ohs.request("GET", f"{base}/abc.DEF_1~-", admin)
    assert status == 200 and resp["uses_allowed"] == 2
    status, resp = await ohs.request(
        "PUT", f"{base}/abc.DEF_1~-", admin, {"uses_allowed": None, "expiry_time": future}
    )
    assert (status, resp["uses_allowed"], resp["expiry_time"]) == (200, None, future)
    status, resp = await ohs.request("PUT", f"{base}/abc.DEF_1~-", admin, {})
    assert status == 200 and resp["expiry_time"] == future
    status, resp = await ohs.request("DELETE", f"{base}/abc.DEF_1~-", admin)
    assert (status, resp) == (200, {})
    for method in ("GET", "PUT", "DELETE"):
        status, resp = await ohs.request(method, f"{base}/abc.DEF_1~-", admin, {})
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND"), method


async def test_registration_token_bad_input(ohs: Harness) -> None:
    _, admin = await ohs.register("boss", admin=True)
    base = f"{ADMIN}/registration_tokens"
    await ohs.request("POST", f"{base}/new", admin, {"token": "exists"})
    for body in [
        {"token": "has space"},
        {"token": ""},
        {"token": "x" * 65},
        {"token": 5},
        {"token": "exists"},
        {"token": "abc\n"},  # `$` would let a trailing newline through
        {"length": 0},
        {"length": 65},
        {"length": "8"},
        {"length": True},
        {"uses_allowed": -1},
        {"uses_allowed": 1.5},
        {"uses_allowed": True},
        {"expiry_time": 1},
        {"expiry_time": "soon"},
    ]:
        status, resp = await ohs.request("POST", f"{base}/new", admin, body)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), body
    for body in [{"uses_allowed": -5}, {"expiry_time": 10}]:
        status, resp = await ohs.request("PUT", f"{base}/exists", admin, body)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), body
    status, resp = await ohs.request("POST", f"{base}/new", admin, raw=b"nope")
    assert (status, resp["errcode"]) == (400, "M_NOT_JSON")


async def test_created_token_registers_a_user(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_requires_token=True) as hs:
        _, admin = await hs.register("boss", admin=True)
        status, token = await hs.request(
            "POST", f"{ADMIN}/registration_tokens/new", admin, {"uses_allowed": 1}
        )
        auth = {"type": "m.login.registration_token", "token": token["token"]}
        body = {"username": "newbie", "password": "pw", "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert status == 200, resp
        status, resp = await hs.request(
            "GET", f"{ADMIN}/registration_tokens/{token['token']}", admin
        )
        assert (resp["pending"], resp["completed"]) == (0, 1)
