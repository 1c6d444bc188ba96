"""Device management: GET/PUT/DELETE /devices/{deviceId}, GET /devices, POST
/delete_devices, the password UIA they use, and the device listener."""

from __future__ import annotations

from typing import Any

from tests.accounts.conftest import PASSWORD, R, login, password_auth, register
from tests.support.harness import Harness

ALICE = "@alice:test.local"


async def _alice(hs: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    first = await register(hs, "alice", device_id="ONE", initial_device_display_name="One")
    second = await login(hs, "alice", device_id="TWO")
    return first, second


async def test_list_get_and_rename(ohs: Harness) -> None:
    first, _ = await _alice(ohs)
    token = first["access_token"]
    status, resp = await ohs.request("GET", f"{R}/devices", token)
    assert status == 200
    assert [(d["device_id"], d["display_name"]) for d in resp["devices"]] == [
        ("ONE", "One"),
        ("TWO", None),
    ]
    assert set(resp["devices"][0]) == {"device_id", "display_name", "last_seen_ip", "last_seen_ts"}
    status, resp = await ohs.request("PUT", f"{R}/devices/TWO", token, {"display_name": "Two"})
    assert (status, resp) == (200, {})
    status, resp = await ohs.request("GET", f"{R}/devices/TWO", token)
    assert resp["display_name"] == "Two"
    status, resp = await ohs.request("PUT", f"{R}/devices/TWO", token, {})
    assert status == 200
    status, resp = await ohs.request("GET", f"{R}/devices/TWO", token)
    assert resp["display_name"] == "Two"


async def test_device_errors(ohs: Harness) -> None:
    first, _ = await _alice(ohs)
    token = first["access_token"]
    _, _bob = await ohs.register("bob", device_id="BOBDEV")
    status, resp = await ohs.request("GET", f"{R}/devices/NOPE", token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await ohs.request("GET", f"{R}/devices/BOBDEV", token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")  # another user's device
    status, resp = await ohs.request("PUT", f"{R}/devices/NOPE", token, {"display_name": "x"})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await ohs.request("PUT", f"{R}/devices/NOPE", token, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await ohs.request("PUT", f"{R}/devices/ONE", token, {"display_name": 5})
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
    status, resp = await ohs.request("PUT", f"{R}/devices/ONE", token, {"display_name": "x" * 101})
    assert (status, resp["errcode"]) == (400, "M_TOO_LARGE")
    status, resp = await ohs.request("DELETE", f"{R}/devices/NOPE", token, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await ohs.request("GET", f"{R}/devices")
    assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_delete_device_with_password_uia(ohs: Harness) -> None:
    first, second = await _alice(ohs)
    token = first["access_token"]
    status, resp = await ohs.request("DELETE", f"{R}/devices/TWO", token)
    assert status == 401
    assert resp["flows"] == [{"stages": ["m.login.password"]}]
    session = resp["session"]
    body = {"auth": password_auth(ALICE, session, "wrong")}
    status, resp = await ohs.request("DELETE", f"{R}/devices/TWO", token, body)
    assert (status, resp["errcode"], resp["session"]) == (401, "M_FORBIDDEN", session)
    # Another account's credentials are refused outright (403), not a retryable 401.
    body = {"auth": password_auth("@bob:test.local", session)}
    status, resp = await ohs.request("DELETE", f"{R}/devices/TWO", token, body)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    body = {"auth": password_auth("alice", session)}
    status, resp = await ohs.request("DELETE", f"{R}/devices/TWO", token, body)
    assert (status, resp) == (200, {})
    # The deleted device's token is gone with it.
    status, resp = await ohs.request("GET", f"{R}/account/whoami", second["access_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("GET", f"{R}/devices/TWO", token)
    assert status == 404
    # The session authorised one deletion only.
    status, resp = await ohs.request("DELETE", f"{R}/devices/ONE", token, body)
    assert (status, resp["errcode"]) == (400, "M_UNKNOWN")


async def test_session_bound_to_operation(ohs: Harness) -> None:
    first, _ = await _alice(ohs)
    token = first["access_token"]
    status, resp = await ohs.request("DELETE", f"{R}/devices/TWO", token)
    body = {"devices": ["TWO"], "auth": password_auth(ALICE, resp["session"])}
    status, resp = await ohs.request("POST", f"{R}/delete_devices", token, body)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_delete_devices_bulk(ohs: Harness) -> None:
    first, second = await _alice(ohs)
    third = await login(ohs, "alice")
    token = first["access_token"]
    body = {"devices": ["TWO", third["device_id"], "UNKNOWN"], "auth": password_auth(ALICE, None)}
    status, resp = await ohs.request("POST", f"{R}/delete_devices", token, body)
    assert (status, resp) == (200, {})
    status, resp = await ohs.request("GET", f"{R}/devices", token)
    assert [d["device_id"] for d in resp["devices"]] == ["ONE"]
    for gone in (second, third):
        status, _ = await ohs.request("GET", f"{R}/account/whoami", gone["access_token"])
        assert status == 401


async def test_delete_devices_bad_bodies(ohs: Harness) -> None:
    first, _ = await _alice(ohs)
    token = first["access_token"]
    for body, code in [
        ({}, "M_MISSING_PARAM"),
        ({"devices": "TWO"}, "M_BAD_JSON"),
        ({"devices": [1]}, "M_BAD_JSON"),
        ({"devices": ["x"] * 1001}, "M_INVALID_PARAM"),
        ({"devices": ["TWO"], "auth": []}, "M_BAD_JSON"),
        ({"devices": ["TWO"], "auth": {**password_auth(ALICE, None), "password": 1}}, "M_BAD_JSON"),
        (
            {"devices": ["TWO"], "auth": {"type": "m.login.password", "password": "x"}},
            "M_MISSING_PARAM",
        ),
    ]:
        status, resp = await ohs.request("POST", f"{R}/delete_devices", token, body)
        assert (status, resp["errcode"]) == (400, code), body


async def test_uia_without_password_user(ohs: Harness) -> None:
    _, token = await ohs.register("nopass")
    body = {"devices": ["DEV"], "auth": password_auth("@nopass:test.local", None, "anything")}
    status, resp = await ohs.request("POST", f"{R}/delete_devices", token, body)
    assert (status, resp["errcode"]) == (401, "M_FORBIDDEN")


async def test_device_listener(ohs: Harness) -> None:
    seen: list[tuple[str, list[str], bool]] = []

    async def listener(user_id: str, device_ids: list[str], deleted: bool) -> None:
        seen.append((user_id, device_ids, deleted))

    ohs.services.accounts.add_device_listener(listener)
    ohs.services.accounts.add_device_listener(lambda *a: seen.append(("sync", [], False)))
    await register(ohs, "alice", device_id="ONE")
    first = await login(ohs, "alice", device_id="ONE")  # reused: not a new device
    second = await login(ohs, "alice", device_id="TWO")
    await ohs.request("POST", f"{R}/logout", second["access_token"], {})
    body = {"devices": ["ONE"], "auth": password_auth(ALICE, None, PASSWORD)}
    await ohs.request("POST", f"{R}/delete_devices", first["access_token"], body)
    assert [s for s in seen if s[0] != "sync"] == [
        (ALICE, ["ONE"], False),
        (ALICE, ["TWO"], False),
        (ALICE, ["TWO"], True),
        (ALICE, ["ONE"], True),
    ]
    assert len([s for s in seen if s[0] == "sync"]) == 4


async def test_failing_listener_does_not_fail_request(ohs: Harness) -> None:
    def broken(user_id: str, device_ids: list[str], deleted: bool) -> None:
        raise RuntimeError("boom")

    ohs.services.accounts.add_device_listener(broken)
    await register(ohs, "alice")
