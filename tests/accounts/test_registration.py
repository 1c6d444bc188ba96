"""POST /register with user-interactive auth, /register/available, token validity, guests."""

from __future__ import annotations

import asyncio

from tests.accounts.conftest import PASSWORD, HarnessFactory, R, register
from tests.support.harness import Harness

V1_VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"


async def test_first_request_returns_flows_and_session(ohs: Harness) -> None:
    status, resp = await ohs.request("POST", f"{R}/register", body={})
    assert status == 401
    assert resp["flows"] == [{"stages": ["m.login.dummy"]}]
    assert resp["params"] == {}
    assert isinstance(resp["session"], str) and resp["session"]
    assert "errcode" not in resp and "completed" not in resp


async def test_two_step_dummy_registration(ohs: Harness) -> None:
    body = {"username": "alice", "password": PASSWORD}
    status, first = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 401
    auth = {"type": "m.login.dummy", "session": first["session"]}
    status, resp = await ohs.request("POST", f"{R}/register", body={**body, "auth": auth})
    assert status == 200, resp
    assert resp["user_id"] == "@alice:test.local"
    assert resp["home_server"] == "test.local"
    assert resp["access_token"].startswith("syt_") and resp["device_id"]
    assert "refresh_token" not in resp and "expires_in_ms" not in resp
    status, who = await ohs.request("GET", f"{R}/account/whoami", resp["access_token"])
    assert status == 200
    assert who == {
        "user_id": "@alice:test.local",
        "device_id": resp["device_id"],
        "is_guest": False,
    }
    profile = await ohs.services.profile_store.get_profile("@alice:test.local")
    assert profile == {"displayname": "alice"}


async def test_nio_one_shot_dummy_auth_without_session(ohs: Harness) -> None:
    resp = await register(ohs, "bob")
    assert resp["user_id"] == "@bob:test.local"


async def test_replayed_session_returns_the_same_account(ohs: Harness) -> None:
    # As Synapse: a retried request (say, after a lost response) gets the account its
    # session registered, logged in again, never a second account.
    status, first = await ohs.request("POST", f"{R}/register", body={})
    auth = {"type": "m.login.dummy", "session": first["session"]}
    body = {"username": "carol", "password": PASSWORD, "auth": auth}
    status, done = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 200
    body = {"username": "carol2", "password": PASSWORD, "auth": auth}
    status, again = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 200, again
    assert again["user_id"] == "@carol:test.local"
    assert again["access_token"] != done["access_token"]
    assert not await ohs.services.account_store.user_exists("@carol2:test.local")
    status, who = await ohs.request("GET", f"{R}/account/whoami", again["access_token"])
    assert status == 200 and who["user_id"] == "@carol:test.local"


async def test_session_remembers_first_request_parameters(ohs: Harness) -> None:
    body = {
        "username": "dora",
        "password": "übers3kr1t",
        "device_id": "XYZZY",
        "initial_device_display_name": "phone",
        "inhibit_login": True,
    }
    status, first = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 401
    auth = {"type": "m.login.dummy", "session": first["session"]}
    status, resp = await ohs.request("POST", f"{R}/register", body={"auth": auth})
    assert status == 200, resp
    assert resp == {"user_id": "@dora:test.local", "home_server": "test.local"}
    # The remembered password is the one that logs in.
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "dora"},
        "password": "übers3kr1t",
        "device_id": "XYZZY",
    }
    status, resp = await ohs.request("POST", f"{R}/login", body=login)
    assert status == 200, resp
    # Without inhibit_login the remembered device and display name are used.
    body = {
        "username": "erin",
        "password": PASSWORD,
        "device_id": "D1",
        "initial_device_display_name": "laptop",
    }
    status, first = await ohs.request("POST", f"{R}/register", body=body)
    auth = {"type": "m.login.dummy", "session": first["session"]}
    status, resp = await ohs.request("POST", f"{R}/register", body={"auth": auth})
    assert status == 200 and resp["device_id"] == "D1", resp
    status, dev = await ohs.request("GET", f"{R}/devices/D1", resp["access_token"])
    assert status == 200 and dev["display_name"] == "laptop"


async def test_failed_registration_leaves_session_usable(ohs: Harness) -> None:
    await register(ohs, "frank")
    status, first = await ohs.request("POST", f"{R}/register", body={})
    auth = {"type": "m.login.dummy", "session": first["session"]}
    body = {"username": "frank", "password": PASSWORD, "auth": auth}
    status, resp = await ohs.request("POST", f"{R}/register", body=body)
    assert (status, resp["errcode"]) == (400, "M_USER_IN_USE")
    body = {"username": "frank2", "password": PASSWORD, "auth": auth}
    status, resp = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 200 and resp["user_id"] == "@frank2:test.local", resp


async def test_unknown_session_and_stage(ohs: Harness) -> None:
    body = {"username": "dave", "password": PASSWORD}
    auth = {"type": "m.login.dummy", "session": "nonexistent"}
    status, resp = await ohs.request("POST", f"{R}/register", body={**body, "auth": auth})
    assert (status, resp["errcode"]) == (400, "M_UNKNOWN")
    auth = {"type": "m.login.password"}
    status, resp = await ohs.request("POST", f"{R}/register", body={**body, "auth": auth})
    assert status == 401
    assert resp["errcode"] == "M_UNRECOGNIZED" and resp["session"]
    assert resp["flows"] == [{"stages": ["m.login.dummy"]}]
    # The session keeps working after the failed attempt.
    auth = {"type": "m.login.dummy", "session": resp["session"]}
    status, resp = await ohs.request("POST", f"{R}/register", body={**body, "auth": auth})
    assert status == 200, resp


async def test_session_bound_to_its_endpoint(ohs: Harness) -> None:
    _, first = await ohs.request("POST", f"{R}/register", body={})
    user = await register(ohs, "erin")
    body = {"devices": [], "auth": {"type": "m.login.dummy", "session": first["session"]}}
    status, resp = await ohs.request("POST", f"{R}/delete_devices", user["access_token"], body)
    assert (status, resp["errcode"]) == (400, "M_UNKNOWN")  # not this user's session


async def test_registration_disabled(make_hs: HarnessFactory) -> None:
    async with make_hs(enable_registration=False) as hs:
        body = {"username": "x", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        status, resp = await hs.request("GET", f"{R}/register/available?username=x")
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
        status, resp = await hs.request("GET", f"{V1_VALIDITY}?token=abc")
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_invalid_and_taken_usernames(ohs: Harness) -> None:
    await register(ohs, "frank")
    for name, code in [
        ("frank", "M_USER_IN_USE"),
        ("FRANK", "M_USER_IN_USE"),  # lowercased, as Synapse does
        ("bad name", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
        ("12345", "M_INVALID_USERNAME"),  # numeric IDs are for guests
        ("x" * 300, "M_INVALID_USERNAME"),
        ("@frank:elsewhere", "M_INVALID_USERNAME"),
    ]:
        body = {"username": name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        status, resp = await ohs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (400, code), name
        status, resp = await ohs.request(
            "GET", f"{R}/register/available", params={"username": name}
        )
        assert (status, resp["errcode"]) == (400, code), name
    # A final newline is not part of the grammar (a regex's `$` alone would let it through).
    body = {"username": "newname\n", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    status, resp = await ohs.request("POST", f"{R}/register", body=body)
    assert (status, resp["errcode"]) == (400, "M_INVALID_USERNAME")


async def test_register_available(ohs: Harness) -> None:
    status, resp = await ohs.request("GET", f"{R}/register/available?username=free")
    assert (status, resp) == (200, {"available": True})
    status, resp = await ohs.request("GET", f"{R}/register/available")
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_bad_bodies(ohs: Harness) -> None:
    dummy = {"type": "m.login.dummy"}
    cases = [
        ({"username": 5, "password": PASSWORD, "auth": dummy}, "M_BAD_JSON"),
        ({"username": "g", "password": ["x"], "auth": dummy}, "M_BAD_JSON"),
        ({"username": "g", "password": PASSWORD, "inhibit_login": "yes"}, "M_BAD_JSON"),
        ({"username": "g", "password": PASSWORD, "refresh_token": 1}, "M_BAD_JSON"),
        ({"username": "g", "password": PASSWORD, "auth": "dummy"}, "M_BAD_JSON"),
        ({"username": "g", "password": PASSWORD, "auth": {"type": 3}}, "M_BAD_JSON"),
        ({"username": "g", "password": PASSWORD, "device_id": ""}, "M_INVALID_PARAM"),
        ({"username": "g", "auth": dummy}, "M_MISSING_PARAM"),
        ({"username": "g", "password": "", "auth": dummy}, "M_WEAK_PASSWORD"),
    ]
    for body, code in cases:
        status, resp = await ohs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (400, code), body
    status, resp = await ohs.request("POST", f"{R}/register", raw=b"[1, 2]")
    assert (status, resp["errcode"]) == (400, "M_NOT_JSON")
    status, resp = await ohs.request("POST", f"{R}/register?kind=robot", body={})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_inhibit_login_device_and_display_name(ohs: Harness) -> None:
    resp = await register(ohs, "gina", inhibit_login=True)
    assert resp == {"user_id": "@gina:test.local", "home_server": "test.local"}
    assert await ohs.services.account_store.list_devices("@gina:test.local") == []
    resp = await register(
        ohs, "hank", device_id="MYPHONE", initial_device_display_name="Hank's phone"
    )
    assert resp["device_id"] == "MYPHONE"
    status, device = await ohs.request("GET", f"{R}/devices/MYPHONE", resp["access_token"])
    assert status == 200 and device["display_name"] == "Hank's phone"


async def test_generated_username_and_refresh_token(ohs: Harness) -> None:
    body = {"password": PASSWORD, "auth": {"type": "m.login.dummy"}, "refresh_token": True}
    status, resp = await ohs.request("POST", f"{R}/register", body=body)
    assert status == 200, resp
    assert resp["user_id"][1:].split(":")[0].isdigit()
    assert resp["refresh_token"].startswith("syr_") and resp["expires_in_ms"] > 0


async def test_guest_registration(make_hs: HarnessFactory) -> None:
    async with make_hs() as hs:
        status, resp = await hs.request("POST", f"{R}/register?kind=guest", body={})
        assert (status, resp["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


async def test_guest_registration_allowed(make_hs: HarnessFactory) -> None:
    async with make_hs(allow_guest_access=True, enable_registration=False) as hs:
        status, resp = await hs.request("POST", f"{R}/register?kind=guest", body={})
        assert status == 200, resp
        status, who = await hs.request("GET", f"{R}/account/whoami", resp["access_token"])
        assert status == 200 and who["is_guest"] is True
        assert who["user_id"] == resp["user_id"]


async def test_registration_rate_limited_per_ip(make_hs: HarnessFactory) -> None:
    async with make_hs(rc_registration={"per_second": 0.001, "burst_count": 2}) as hs:
        await register(hs, "r1")
        await register(hs, "r2")
        body = {"username": "r3", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert resp["retry_after_ms"] > 0


# -- registration tokens


async def test_token_flow_required(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_requires_token=True) as hs:
        await hs.services.account_store.create_registration_token("tok", uses_allowed=None)
        status, resp = await hs.request("POST", f"{R}/register", body={})
        assert status == 401
        assert resp["flows"] == [{"stages": ["m.login.registration_token"]}]
        session = resp["session"]
        body = {"username": "ivy", "password": PASSWORD}
        dummy = {"type": "m.login.dummy", "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": dummy})
        assert (status, resp["errcode"]) == (401, "M_UNRECOGNIZED")
        wrong = {"type": "m.login.registration_token", "token": "nope", "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": wrong})
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED")
        bad = {"type": "m.login.registration_token", "token": 7, "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": bad})
        assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
        right = {"type": "m.login.registration_token", "token": "tok", "session": session}
        status, resp = await hs.request("POST", f"{R}/register", body={**body, "auth": right})
        assert status == 200, resp
        token = await hs.services.account_store.get_registration_token("tok")
        assert token is not None and (token.pending, token.completed) == (0, 1)


async def test_token_with_one_use_registers_once(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_requires_token=True) as hs:
        await hs.services.account_store.create_registration_token("once", uses_allowed=1)
        status, resp = await hs.request("GET", f"{V1_VALIDITY}?token=once")
        assert (status, resp) == (200, {"valid": True})
        auth = {"type": "m.login.registration_token", "token": "once"}
        body = {"username": "jack", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert status == 200, resp
        body = {"username": "jill", "password": PASSWORD, "auth": auth}
        status, resp = await hs.request("POST", f"{R}/register", body=body)
        assert (status, resp["errcode"]) == (401, "M_UNAUTHORIZED")
        status, resp = await hs.request("GET", f"{V1_VALIDITY}?token=once")
        assert (status, resp) == (200, {"valid": False})


async def test_token_with_one_use_under_concurrent_attempts(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_requires_token=True) as hs:
        await hs.services.account_store.create_registration_token("race", uses_allowed=1)
        auth = {"type": "m.login.registration_token", "token": "race"}

        async def attempt(name: str) -> int:
            body = {"username": name, "password": PASSWORD, "auth": auth}
            status, _ = await hs.request("POST", f"{R}/register", body=body)
            return status

        statuses = await asyncio.gather(attempt("kim"), attempt("kip"), attempt("kit"))
        assert sorted(statuses) == [200, 401, 401]
        token = await hs.services.account_store.get_registration_token("race")
        assert token is not None and (token.pending, token.completed) == (0, 1)


async def test_token_validity_endpoint(make_hs: HarnessFactory) -> None:
    async with make_hs(registration_requires_token=True) as hs:
        store = hs.services.account_store
        await store.create_registration_token("expired", expiry_time=1)
        status, resp = await hs.request("GET", f"{V1_VALIDITY}?token=expired")
        assert (status, resp) == (200, {"valid": False})
        status, resp = await hs.request("GET", f"{V1_VALIDITY}?token=unknown")
        assert (status, resp) == (200, {"valid": False})
        status, resp = await hs.request("GET", V1_VALIDITY)
        assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_registration_probes_follow_rc_registration(make_hs: HarnessFactory) -> None:
    """Unauthenticated /register probes are limited at least as generously as
    rc_registration (so --no-rate-limit lifts them too)."""
    unlimited = {"per_second": 1_000_000, "burst_count": 1_000_000}
    async with make_hs(enable_registration=True, rc_registration=unlimited) as hs:
        for _ in range(40):
            status, body = await hs.request("POST", "/_matrix/client/v3/register", None, {})
            assert status == 401, body
    synapse_default = {"per_second": 0.17, "burst_count": 3}
    async with make_hs(enable_registration=True, rc_registration=synapse_default) as hs:
        statuses = [
            (await hs.request("POST", "/_matrix/client/v3/register", None, {}))[0]
            for _ in range(40)
        ]
        assert statuses.count(401) >= 20 and 429 in statuses
