"""Guest accounts: only the spec's endpoints, only rooms that admit guests, and out again
when a room stops admitting them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {
        "allow_guest_access": True,
        "enable_registration": True,
        "enable_registration_without_verification": True,
    }


async def _guest(hs: Harness) -> tuple[str, str]:
    status, body = await hs.request("POST", f"{V3}/register?kind=guest", None, {})
    assert status == 200, body
    return body["user_id"], body["access_token"]


async def test_guests_may_use_only_the_listed_endpoints(hs: Harness) -> None:
    guest, token = await _guest(hs)
    status, body = await hs.request("GET", f"{V3}/account/whoami", token)
    assert status == 200 and body["user_id"] == guest and body["is_guest"] is True
    assert (await hs.request("GET", f"{V3}/sync", token))[0] == 200
    for method, path, payload in [
        ("POST", f"{V3}/createRoom", {}),
        ("PUT", f"{V3}/user/{guest}/account_data/x.y", {"a": 1}),
        ("POST", f"{V3}/room_keys/version", {"algorithm": "x", "auth_data": {}}),
        ("PUT", f"{V3}/profile/{guest}/avatar_url", {"avatar_url": "mxc://a/b"}),
    ]:
        status, body = await hs.request(method, path, token, payload)
        assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", (path, body)
    status, _ = await hs.request(
        "PUT", f"{V3}/profile/{guest}/displayname", token, {"displayname": "Visitor"}
    )
    assert status == 200


async def test_guests_leave_when_the_room_stops_admitting_them(hs: Harness) -> None:
    _, owner = await hs.register()
    room = await hs.create_room(owner, preset="public_chat")
    guest, token = await _guest(hs)
    status, body = await hs.request("POST", f"{V3}/rooms/{room}/join", token, {})
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.guest_access", owner, {"guest_access": "can_join"}
    )
    assert status == 200
    assert (await hs.request("POST", f"{V3}/rooms/{room}/join", token, {}))[0] == 200
    members = hs.services.membership_store
    assert guest in await members.get_joined_users(room)
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.guest_access", owner, {"guest_access": "forbidden"}
    )
    assert status == 200
    for _ in range(100):  # the eviction runs just after the commit
        if guest not in await members.get_joined_users(room):
            break
        await asyncio.sleep(0.02)
    membership = await members.get_membership(room, guest)
    assert membership is not None and membership.membership == "leave"


async def test_guests_join_by_alias_only_rooms_that_admit_them(hs: Harness) -> None:
    """POST /join/{roomIdOrAlias} admits guests as Synapse does, under the same rule as
    /rooms/{roomId}/join: only a room whose guest_access is can_join."""
    _, owner = await hs.register()
    room = await hs.create_room(owner, preset="public_chat", room_alias_name="visitors")
    alias = f"%23visitors:{hs.server_name}"
    _, token = await _guest(hs)
    status, body = await hs.request("POST", f"{V3}/join/{alias}", token, {})
    assert status == 403 and body["errcode"] == "M_GUEST_ACCESS_FORBIDDEN", body
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.guest_access", owner, {"guest_access": "can_join"}
    )
    assert status == 200
    status, body = await hs.request("POST", f"{V3}/join/{alias}", token, {})
    assert status == 200 and body["room_id"] == room, body


async def test_a_guest_upgrades_to_a_full_account(hs: Harness) -> None:
    """POST /register with the guest's `guest_access_token` (Synapse's upgrade): the same
    user ID becomes a full account with the password; another guest's token, a wrong
    username or a second upgrade are refused."""
    _, owner = await hs.register()
    room = await hs.create_room(owner, preset="public_chat")
    guest, token = await _guest(hs)
    _, other_token = await _guest(hs)
    localpart = guest[1:].split(":", 1)[0]
    body = {"username": localpart, "password": "SIR_Arthur_David", "guest_access_token": token}
    status, resp = await hs.request("POST", f"{V3}/register", None, body)
    assert status == 401 and "session" in resp, resp  # UIA first, the ID not refused
    status, resp = await hs.request(
        "POST", f"{V3}/register", None, {**body, "guest_access_token": other_token}
    )
    assert status == 403 and resp["errcode"] == "M_FORBIDDEN", resp
    status, resp = await hs.request(
        "POST", f"{V3}/register", None, {**body, "auth": {"type": "m.login.dummy"}}
    )
    assert status == 200 and resp["user_id"] == guest, resp
    new_token = resp["access_token"]
    status, resp = await hs.request("GET", f"{V3}/account/whoami", new_token)
    assert status == 200 and resp["is_guest"] is False
    status, resp = await hs.request("GET", f"{V3}/account/whoami", token)
    assert status == 200 and resp["is_guest"] is False  # the old token: no longer a guest
    # a full account joins rooms that do not admit guests, and logs in with the password
    assert (await hs.request("POST", f"{V3}/rooms/{room}/join", new_token, {}))[0] == 200
    status, resp = await hs.request(
        "POST",
        f"{V3}/login",
        None,
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "SIR_Arthur_David",
        },
    )
    assert status == 200 and resp["user_id"] == guest, resp
    status, resp = await hs.request(
        "POST", f"{V3}/register", None, {**body, "auth": {"type": "m.login.dummy"}}
    )
    assert status == 403, resp  # no longer a guest token
