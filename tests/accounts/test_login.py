"""GET/POST /login, /logout, /logout/all, /account/whoami and /refresh."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.accounts.conftest import PASSWORD, HarnessFactory, R, login, register
from tests.support.harness import Harness
from tests.support.holds import hold_first_call


def _password_login(identifier: Any, password: str = PASSWORD) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": identifier, "password": password}


async def test_login_flows(ohs: Harness) -> None:
    status, resp = await ohs.request("GET", f"{R}/login")
    assert (status, resp) == (200, {"flows": [{"type": "m.login.password"}]})


async def test_login_identifier_forms(ohs: Harness) -> None:
    await register(ohs, "alice")
    for user in ("alice", "@alice:test.local", "Alice"):
        resp = await login(ohs, user)
        assert resp["user_id"] == "@alice:test.local"
        assert resp["home_server"] == "test.local"
        assert resp["access_token"] and resp["device_id"]
    legacy = {"type": "m.login.password", "user": "alice", "password": PASSWORD}
    status, resp = await ohs.request("POST", f"{R}/login", body=legacy)
    assert status == 200 and resp["user_id"] == "@alice:test.local"
    status, who = await ohs.request("GET", f"{R}/account/whoami", resp["access_token"])
    assert who["device_id"] == resp["device_id"]


async def test_login_failures(ohs: Harness) -> None:
    await register(ohs, "bob")
    m_id_user = {"type": "m.id.user", "user": "bob"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        (_password_login(m_id_user, "wrong"), 403, "M_FORBIDDEN"),
        (_password_login({"type": "m.id.user", "user": "nobody"}), 403, "M_FORBIDDEN"),
        (_password_login({"type": "m.id.user", "user": "@bob:elsewhere"}), 403, "M_FORBIDDEN"),
        (_password_login({"type": "m.id.user", "user": "not valid!"}), 403, "M_FORBIDDEN"),
        (
            _password_login({"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            _password_login({"type": "m.id.phone", "country": "GB", "phone": "123"}),
            403,
            "M_FORBIDDEN",
        ),
        (
            {"type": "m.login.password", "medium": "email", "address": "a@b.c", "password": "x"},
            403,
            "M_FORBIDDEN",
        ),
        (_password_login({"type": "m.id.weird"}), 400, "M_UNKNOWN"),
        (_password_login("bob"), 400, "M_BAD_JSON"),
        (_password_login({"type": "m.id.user"}), 400, "M_MISSING_PARAM"),
        (_password_login({"type": "m.id.user", "user": 1}), 400, "M_BAD_JSON"),
        ({"type": "m.login.password", "identifier": m_id_user}, 400, "M_MISSING_PARAM"),
        ({"type": "m.login.password", "password": PASSWORD}, 400, "M_MISSING_PARAM"),
        (_password_login(m_id_user, 5), 400, "M_BAD_JSON"),  # type: ignore[arg-type]
        ({"type": "m.login.token", "token": "x"}, 400, "M_UNKNOWN"),
        ({"identifier": m_id_user, "password": PASSWORD}, 400, "M_MISSING_PARAM"),
        ({**_password_login(m_id_user), "device_id": 5}, 400, "M_BAD_JSON"),
        ({**_password_login(m_id_user), "refresh_token": "yes"}, 400, "M_BAD_JSON"),
    ]
    for body, status_code, errcode in cases:
        status, resp = await ohs.request("POST", f"{R}/login", body=body)
        assert (status, resp["errcode"]) == (status_code, errcode), body
    status, resp = await ohs.request("POST", f"{R}/login", raw=b"{not json")
    assert (status, resp["errcode"]) == (400, "M_NOT_JSON")


async def test_device_id_reuse_replaces_its_tokens(ohs: Harness) -> None:
    await register(ohs, "carol")
    first = await login(ohs, "carol", device_id="LAPTOP", initial_device_display_name="Laptop")
    assert first["device_id"] == "LAPTOP"
    second = await login(ohs, "carol", device_id="LAPTOP", initial_device_display_name="Other")
    assert second["device_id"] == "LAPTOP"
    status, resp = await ohs.request("GET", f"{R}/account/whoami", first["access_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, device = await ohs.request("GET", f"{R}/devices/LAPTOP", second["access_token"])
    assert device["display_name"] == "Laptop"  # the initial name is kept for a known device


async def test_long_initial_display_name_is_truncated(ohs: Harness) -> None:
    await register(ohs, "cody")
    resp = await login(ohs, "cody", initial_device_display_name="n" * 500)
    status, device = await ohs.request(
        "GET", f"{R}/devices/{resp['device_id']}", resp["access_token"]
    )
    assert status == 200 and device["display_name"] == "n" * 100


async def test_failed_logins_lock_the_account(make_hs: HarnessFactory) -> None:
    limits = {"failed_attempts": {"per_second": 0.001, "burst_count": 2}}
    async with make_hs(rc_login=limits) as hs:
        await register(hs, "dave")
        body = _password_login({"type": "m.id.user", "user": "dave"}, "wrong")
        for _ in range(2):
            status, resp = await hs.request("POST", f"{R}/login", body=body)
            assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        status, resp = await hs.request("POST", f"{R}/login", body=body)
        assert (status, resp["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        # Locked now: even the right password is refused until the limit refills.
        right = _password_login({"type": "m.id.user", "user": "dave"})
        status, resp = await hs.request("POST", f"{R}/login", body=right)
        assert (status, resp["errcode"]) == (429, "M_LIMIT_EXCEEDED")


async def test_login_rate_limited_per_address(make_hs: HarnessFactory) -> None:
    limits = {"address": {"per_second": 0.001, "burst_count": 2}}
    async with make_hs(rc_login=limits) as hs:
        await register(hs, "erin")
        await login(hs, "erin")
        await login(hs, "erin")
        body = _password_login({"type": "m.id.user", "user": "erin"})
        status, resp = await hs.request("POST", f"{R}/login", body=body)
        assert (status, resp["errcode"]) == (429, "M_LIMIT_EXCEEDED")


async def test_deactivated_user_cannot_log_in(ohs: Harness) -> None:
    await register(ohs, "fred")
    await ohs.services.account_store.deactivate("@fred:test.local")
    body = _password_login({"type": "m.id.user", "user": "fred"})
    status, resp = await ohs.request("POST", f"{R}/login", body=body)
    # Not M_USER_DEACTIVATED: that would tell anyone, password or not, the account's state.
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    wrong = {**body, "password": "not the password"}
    assert await ohs.request("POST", f"{R}/login", body=wrong) == (status, resp)


async def test_logout_deletes_token_and_device(ohs: Harness) -> None:
    reg = await register(ohs, "gail")
    other = await login(ohs, "gail")
    status, resp = await ohs.request("POST", f"{R}/logout", reg["access_token"], {})
    assert (status, resp) == (200, {})
    status, resp = await ohs.request("GET", f"{R}/account/whoami", reg["access_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("GET", f"{R}/devices", other["access_token"])
    assert [d["device_id"] for d in resp["devices"]] == [other["device_id"]]
    status, resp = await ohs.request("POST", f"{R}/logout")
    assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_a_token_read_overlapping_its_logout_is_not_cached(
    ohs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose token look-up began before the logout and ended after it is
    answered (it raced the logout), but the session it read is not cached: the logged-out
    token is refused at once, not for the token cache's minute."""
    reg = await register(ohs, "ines")
    token = reg["access_token"]
    hold = hold_first_call(
        monkeypatch,
        ohs.services.account_store,
        "get_token_session",
        lambda looked_up: looked_up == token,
    )
    early = asyncio.ensure_future(ohs.request("GET", f"{R}/account/whoami", token))
    await hold.wait_reached()
    status, resp = await ohs.request("POST", f"{R}/logout", token, {})
    assert (status, resp) == (200, {})
    hold.release()
    status, _ = await asyncio.wait_for(early, 10)
    assert status == 200
    status, resp = await ohs.request("GET", f"{R}/account/whoami", token)
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_logout_all(ohs: Harness) -> None:
    reg = await register(ohs, "hugo")
    other = await login(ohs, "hugo")
    status, _ = await ohs.request("POST", f"{R}/logout/all", other["access_token"], {})
    assert status == 200
    for token in (reg["access_token"], other["access_token"]):
        status, resp = await ohs.request("GET", f"{R}/account/whoami", token)
        assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert await ohs.services.account_store.list_devices("@hugo:test.local") == []
    await login(ohs, "hugo")  # the password still works


async def test_whoami_bad_tokens(ohs: Harness) -> None:
    status, resp = await ohs.request("GET", f"{R}/account/whoami", "syt_nonsense")
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("GET", f"{R}/account/whoami")
    assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN")


# -- refresh tokens


async def _refresh(hs: Harness, token: str) -> tuple[int, Any]:
    return await hs.request("POST", f"{R}/refresh", body={"refresh_token": token})


async def test_refresh_token_rotation(ohs: Harness) -> None:
    await register(ohs, "ivan")
    first = await login(ohs, "ivan", refresh_token=True)
    assert first["refresh_token"].startswith("syr_") and first["expires_in_ms"] == 300_000
    status, second = await _refresh(ohs, first["refresh_token"])
    assert status == 200, second
    assert set(second) == {"access_token", "refresh_token", "expires_in_ms"}
    # The old refresh token stays usable until the new access token is used (a client
    # that lost the response can retry) ...
    status, retry = await _refresh(ohs, first["refresh_token"])
    assert status == 200
    # ... which revokes the unused successor from the first attempt.
    status, resp = await _refresh(ohs, second["refresh_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("GET", f"{R}/account/whoami", second["access_token"])
    assert status == 401
    # Using the new access token revokes the old refresh token.
    status, who = await ohs.request("GET", f"{R}/account/whoami", retry["access_token"])
    assert status == 200 and who["device_id"] == first["device_id"]
    status, resp = await _refresh(ohs, first["refresh_token"])
    assert (status, resp["errcode"], resp["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", False)
    status, resp = await ohs.request("GET", f"{R}/account/whoami", first["access_token"])
    assert status == 401
    # The newest refresh token keeps working, and using it revokes its predecessor.
    status, third = await _refresh(ohs, retry["refresh_token"])
    assert status == 200
    status, _fourth = await _refresh(ohs, third["refresh_token"])
    assert status == 200
    status, resp = await _refresh(ohs, retry["refresh_token"])
    assert status == 401


async def test_refresh_errors_and_expiry(ohs: Harness) -> None:
    await register(ohs, "jane")
    status, resp = await _refresh(ohs, "syr_unknown")
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("POST", f"{R}/refresh", body={})
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")
    status, resp = await ohs.request("POST", f"{R}/refresh", body={"refresh_token": 1})
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
    ohs.services.accounts.refreshable_token_lifetime_ms = 50
    session = await login(ohs, "jane", refresh_token=True)
    await asyncio.sleep(0.1)
    status, resp = await ohs.request("GET", f"{R}/account/whoami", session["access_token"])
    assert (status, resp["errcode"], resp["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)
    ohs.services.accounts.refreshable_token_lifetime_ms = 60_000
    status, fresh = await _refresh(ohs, session["refresh_token"])
    assert status == 200
    status, _ = await ohs.request("GET", f"{R}/account/whoami", fresh["access_token"])
    assert status == 200


async def test_logout_revokes_refresh_token(ohs: Harness) -> None:
    await register(ohs, "kate")
    session = await login(ohs, "kate", refresh_token=True)
    status, _ = await ohs.request("POST", f"{R}/logout", session["access_token"], {})
    assert status == 200
    status, resp = await _refresh(ohs, session["refresh_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
