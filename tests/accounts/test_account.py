"""POST /account/password, POST /account/deactivate, GET /account/3pid."""

from __future__ import annotations

from tests.accounts.conftest import PASSWORD, R, login, password_auth, register
from tests.support.harness import Harness

ALICE = "@alice:test.local"
NEW_PASSWORD = "a brand new password"


async def test_change_password_logs_out_other_devices(ohs: Harness) -> None:
    current = await register(ohs, "alice")
    extra_on_current = await login(ohs, "alice", device_id=current["device_id"])
    other = await login(ohs, "alice")
    token = extra_on_current["access_token"]
    status, resp = await ohs.request(
        "POST", f"{R}/account/password", token, {"new_password": NEW_PASSWORD}
    )
    assert status == 401 and resp["flows"] == [{"stages": ["m.login.password"]}]
    body = {"new_password": NEW_PASSWORD, "auth": password_auth(ALICE, resp["session"])}
    status, resp = await ohs.request("POST", f"{R}/account/password", token, body)
    assert (status, resp) == (200, {})
    status, _ = await ohs.request("GET", f"{R}/account/whoami", token)
    assert status == 200  # the current session is kept
    status, resp = await ohs.request("GET", f"{R}/account/whoami", other["access_token"])
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request("GET", f"{R}/devices", token)
    assert [d["device_id"] for d in resp["devices"]] == [current["device_id"]]
    status, resp = await ohs.request(
        "POST",
        f"{R}/login",
        body={"type": "m.login.password", "user": "alice", "password": PASSWORD},
    )
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    await login(ohs, "alice", NEW_PASSWORD)


async def test_change_password_keeping_devices(ohs: Harness) -> None:
    current = await register(ohs, "alice")
    other = await login(ohs, "alice")
    body = {
        "new_password": NEW_PASSWORD,
        "logout_devices": False,
        "auth": password_auth(ALICE, None),
    }
    status, _ = await ohs.request("POST", f"{R}/account/password", current["access_token"], body)
    assert status == 200
    status, _ = await ohs.request("GET", f"{R}/account/whoami", other["access_token"])
    assert status == 200


async def test_change_password_errors(ohs: Harness) -> None:
    current = await register(ohs, "alice")
    token = current["access_token"]
    auth = password_auth(ALICE, None)
    for body, status_code, code in [
        ({"auth": auth}, 400, "M_MISSING_PARAM"),
        ({"new_password": 5, "auth": auth}, 400, "M_BAD_JSON"),
        ({"new_password": "", "auth": auth}, 400, "M_WEAK_PASSWORD"),
        ({"new_password": "x" * 600, "auth": auth}, 400, "M_INVALID_PARAM"),
        ({"new_password": "ok", "logout_devices": "no", "auth": auth}, 400, "M_BAD_JSON"),
        ({"new_password": "ok", "auth": password_auth(ALICE, None, "bad")}, 401, "M_FORBIDDEN"),
    ]:
        status, resp = await ohs.request("POST", f"{R}/account/password", token, body)
        assert (status, resp["errcode"]) == (status_code, code), body
    status, resp = await ohs.request("POST", f"{R}/account/password", None, {"new_password": "x"})
    assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN")
    await login(ohs, "alice")  # unchanged


async def test_deactivate_leaves_rooms_and_blocks_login(ohs: Harness) -> None:
    alice = await register(ohs, "alice")
    other = await login(ohs, "alice")
    _bob_id, bob_token = await ohs.register("bob")
    room_id = await ohs.create_room(bob_token, preset="public_chat")
    invited_room = await ohs.create_room(bob_token)
    status, _ = await ohs.request("POST", f"{R}/join/{room_id}", alice["access_token"], {})
    assert status == 200
    status, _ = await ohs.request(
        "POST", f"{R}/rooms/{invited_room}/invite", bob_token, {"user_id": ALICE}
    )
    assert status == 200

    token = alice["access_token"]
    status, resp = await ohs.request("POST", f"{R}/account/deactivate", token, {})
    assert status == 401 and resp["flows"] == [{"stages": ["m.login.password"]}]
    body = {"auth": password_auth(ALICE, resp["session"]), "erase": True}
    status, resp = await ohs.request("POST", f"{R}/account/deactivate", token, body)
    assert (status, resp) == (200, {"id_server_unbind_result": "success"})

    rooms = await ohs.services.membership_store.get_rooms_for_user(ALICE)
    assert {r: m.membership for r, m in rooms.items()} == {
        room_id: "leave",
        invited_room: "leave",
    }
    for t in (token, other["access_token"]):
        status, resp = await ohs.request("GET", f"{R}/account/whoami", t)
        assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await ohs.request(
        "POST",
        f"{R}/login",
        body={"type": "m.login.password", "user": "alice", "password": PASSWORD},
    )
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")  # no password any more
    assert await ohs.services.profile_store.get_profile(ALICE) == {}
    user = await ohs.services.account_store.get_user(ALICE)
    assert user is not None and user.deactivated and user.password_hash is None
    # The name stays taken.
    status, resp = await ohs.request("GET", f"{R}/register/available?username=alice")
    assert (status, resp["errcode"]) == (400, "M_USER_IN_USE")


async def test_deactivate_errors(ohs: Harness) -> None:
    alice = await register(ohs, "alice")
    token = alice["access_token"]
    for body, status_code, code in [
        ({"erase": "yes", "auth": password_auth(ALICE, None)}, 400, "M_BAD_JSON"),
        ({"id_server": 1, "auth": password_auth(ALICE, None)}, 400, "M_BAD_JSON"),
        ({"auth": password_auth(ALICE, None, "wrong")}, 401, "M_FORBIDDEN"),
    ]:
        status, resp = await ohs.request("POST", f"{R}/account/deactivate", token, body)
        assert (status, resp["errcode"]) == (status_code, code), body
    await login(ohs, "alice")


async def test_threepids_empty(ohs: Harness) -> None:
    alice = await register(ohs, "alice")
    status, resp = await ohs.request("GET", f"{R}/account/3pid", alice["access_token"])
    assert (status, resp) == (200, {"threepids": []})


async def test_change_password_removes_other_sessions_pushers(ohs: Harness) -> None:
    current = await register(ohs, "alice")
    other = await login(ohs, "alice")

    def pusher(key: str) -> dict[str, object]:
        return {
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": key,
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
        }

    token = current["access_token"]
    for tok, key in ((token, "mine"), (other["access_token"], "theirs")):
        status, resp = await ohs.request("POST", f"{R}/pushers/set", tok, pusher(key))
        assert status == 200, resp
    status, resp = await ohs.request(
        "POST", f"{R}/account/password", token, {"new_password": NEW_PASSWORD}
    )
    body = {"new_password": NEW_PASSWORD, "auth": password_auth(ALICE, resp["session"])}
    status, resp = await ohs.request("POST", f"{R}/account/password", token, body)
    assert (status, resp) == (200, {})
    status, resp = await ohs.request("GET", f"{R}/pushers", token)
    assert [p["pushkey"] for p in resp["pushers"]] == ["mine"]
