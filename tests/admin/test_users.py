"""Admin API, users: Synapse's paths and shapes (docs/admin_api/user_admin_api.md), on both
engines, with non-admins refused and bad input answered with Matrix errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from starling.config import RateLimit
from tests.admin.conftest import login, set_password
from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
V3 = "/_synapse/admin/v3"
HS = "test.local"


def names(resp: dict[str, Any]) -> list[str]:
    return [u["name"] for u in resp["users"]]


USER_ENDPOINTS = [
    ("GET", f"{V2}/users"),
    ("GET", f"{V3}/users"),
    ("GET", f"{V2}/users/@bob:{HS}"),
    ("PUT", f"{V2}/users/@bob:{HS}"),
    ("POST", f"{V1}/deactivate/@bob:{HS}"),
    ("POST", f"{V1}/reset_password/@bob:{HS}"),
    ("GET", f"{V1}/users/@bob:{HS}/admin"),
    ("PUT", f"{V1}/users/@bob:{HS}/admin"),
    ("GET", f"{V1}/whois/@bob:{HS}"),
    ("GET", f"{V2}/users/@bob:{HS}/devices"),
    ("POST", f"{V2}/users/@bob:{HS}/devices"),
    ("POST", f"{V2}/users/@bob:{HS}/delete_devices"),
    ("GET", f"{V2}/users/@bob:{HS}/devices/DEV"),
    ("PUT", f"{V2}/users/@bob:{HS}/devices/DEV"),
    ("DELETE", f"{V2}/users/@bob:{HS}/devices/DEV"),
    ("GET", f"{V1}/users/@bob:{HS}/joined_rooms"),
    ("GET", f"{V1}/users/@bob:{HS}/memberships"),
    ("POST", f"{V1}/users/@bob:{HS}/login"),
    ("POST", f"{V1}/users/@bob:{HS}/shadow_ban"),
    ("DELETE", f"{V1}/users/@bob:{HS}/shadow_ban"),
    ("GET", f"{V1}/username_available?username=x"),
    ("GET", f"{V1}/threepid/email/users/a@b.c"),
    ("GET", f"{V1}/auth_providers/oidc-x/users/y"),
]


async def test_user_endpoints_refuse_non_admins(hs: Harness) -> None:
    _, plain = await hs.register("plain")
    await hs.register("bob")
    for method, path in USER_ENDPOINTS:
        status, resp = await hs.request(method, path, plain, {})
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), (method, path)
        status, resp = await hs.request(method, path, None, {})
        assert (status, resp["errcode"]) == (401, "M_MISSING_TOKEN"), (method, path)
    user = await hs.services.account_store.get_user(f"@bob:{HS}")
    assert user is not None and not user.deactivated and not user.admin


async def test_list_users_paging_and_filters(hs: Harness, admin: str) -> None:
    for name in ("carol", "dave", "erin"):
        await hs.register(name)
    status, resp = await hs.request("PUT", f"{V2}/users/@dave:{HS}", admin, {"displayname": "zed"})
    assert status == 200, resp
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"limit": "2"})
    assert status == 200, resp
    assert resp["total"] == 4 and names(resp) == [f"@carol:{HS}", f"@dave:{HS}"]
    assert resp["next_token"] == "2"
    first = resp["users"][0]
    assert first["admin"] is False and first["deactivated"] is False and first["locked"] is False
    assert first["displayname"] == "carol" and isinstance(first["creation_ts"], int)
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"from": "2"})
    assert names(resp) == [f"@erin:{HS}", f"@root:{HS}"] and "next_token" not in resp
    # name: user ID or display name, case-insensitively; user_id: the ID only
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"name": "zE"})
    assert names(resp) == [f"@dave:{HS}"]
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"user_id": "zed"})
    assert names(resp) == []
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"user_id": "ERI"})
    assert names(resp) == [f"@erin:{HS}"]
    # LIKE wildcards are literal
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"name": "%"})
    assert resp["total"] == 0
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"admins": "true"})
    assert names(resp) == [f"@root:{HS}"]
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"admins": "false"})
    assert f"@root:{HS}" not in names(resp) and resp["total"] == 3
    status, resp = await hs.request(
        "GET", f"{V2}/users", admin, params={"order_by": "displayname", "dir": "b"}
    )
    assert names(resp)[0] == f"@dave:{HS}"  # "zed"
    status, resp = await hs.request(
        "GET", f"{V2}/users", admin, params={"order_by": "creation_ts", "dir": "b"}
    )
    assert status == 200 and resp["total"] == 4
    # deactivated: v2 includes them only when asked; v3 filters both ways
    status, _ = await hs.request("POST", f"{V1}/deactivate/@erin:{HS}", admin, {})
    assert status == 200
    status, resp = await hs.request("GET", f"{V2}/users", admin)
    assert f"@erin:{HS}" not in names(resp)
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"deactivated": "true"})
    assert f"@erin:{HS}" in names(resp) and resp["total"] == 4
    status, resp = await hs.request("GET", f"{V3}/users", admin)
    assert resp["total"] == 4
    status, resp = await hs.request("GET", f"{V3}/users", admin, params={"deactivated": "true"})
    assert names(resp) == [f"@erin:{HS}"] and resp["users"][0]["deactivated"] is True
    status, resp = await hs.request("GET", f"{V3}/users", admin, params={"deactivated": "false"})
    assert f"@erin:{HS}" not in names(resp)
    # guests
    guest_id = "@1234567890:test.local"
    await hs.services.account_store.create_user(guest_id, None, is_guest=True)
    status, resp = await hs.request("GET", f"{V2}/users", admin)
    assert guest_id in names(resp)
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"guests": "false"})
    assert guest_id not in names(resp)
    # locked users are left out unless asked for
    status, _ = await hs.request("PUT", f"{V2}/users/@carol:{HS}", admin, {"locked": True})
    status, resp = await hs.request("GET", f"{V2}/users", admin)
    assert f"@carol:{HS}" not in names(resp)
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"locked": "true"})
    assert f"@carol:{HS}" in names(resp)
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"not_user_type": ""})
    assert resp == {"users": [], "total": 0}


@pytest.mark.parametrize(
    "params",
    [
        {"order_by": "password_hash"},
        {"dir": "sideways"},
        {"limit": "-1"},
        {"from": "abc"},
        {"guests": "maybe"},
        {"deactivated": "2"},
    ],
)
async def test_list_users_bad_input(hs: Harness, admin: str, params: dict[str, str]) -> None:
    for base in (V2, V3):
        status, resp = await hs.request("GET", f"{base}/users", admin, params=params)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), (base, params)


async def test_query_user(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    await hs.services.account_store.upsert_device(bob, "DEV", last_seen_ts=1234, last_seen_ip="::1")
    status, resp = await hs.request("GET", f"{V2}/users/{bob}", admin)
    assert status == 200, resp
    assert resp["name"] == bob and resp["displayname"] == "bob" and resp["admin"] is False
    assert resp["threepids"] == [] and resp["erased"] is False and resp["last_seen_ts"] == 1234
    status, resp = await hs.request("GET", f"{V2}/users/@nobody:{HS}", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V2}/users/@bob:elsewhere.org", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request("GET", f"{V2}/users/not-a-user-id", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")


async def test_create_and_modify_user(hs: Harness, admin: str) -> None:
    new = f"@newbie:{HS}"
    body = {"password": "pw-one", "displayname": "New Bie", "admin": False}
    status, resp = await hs.request("PUT", f"{V2}/users/{new}", admin, body)
    assert status == 201, resp
    assert resp["name"] == new and resp["displayname"] == "New Bie"
    status, resp = await login(hs, "newbie", "pw-one")
    assert status == 200, resp
    token = resp["access_token"]
    # modify: avatar, admin, password (logs out devices by default)
    body = {"avatar_url": "mxc://test.local/abc", "admin": True, "password": "pw-two"}
    status, resp = await hs.request("PUT", f"{V2}/users/{new}", admin, body)
    assert status == 200, resp
    assert resp["avatar_url"] == "mxc://test.local/abc" and resp["admin"] is True
    status, resp = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, _ = await login(hs, "newbie", "pw-one")
    assert status == 403
    status, resp = await login(hs, "newbie", "pw-two")
    assert status == 200
    token = resp["access_token"]
    # a password change that keeps devices
    body = {"password": "pw-three", "logout_devices": False}
    status, resp = await hs.request("PUT", f"{V2}/users/{new}", admin, body)
    assert status == 200
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 200
    # empty display name removes it
    status, resp = await hs.request("PUT", f"{V2}/users/{new}", admin, {"displayname": ""})
    assert status == 200 and resp["displayname"] is None


async def test_lock_user(hs: Harness, admin: str) -> None:
    bob, token = await hs.register("bob")
    await set_password(hs, admin, bob, "pw")
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"locked": True})
    assert status == 200 and resp["locked"] is True
    status, resp = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert (status, resp["errcode"], resp["soft_logout"]) == (401, "M_USER_LOCKED", True)
    status, resp = await login(hs, "bob", "pw")
    assert (status, resp["errcode"]) == (401, "M_USER_LOCKED")
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"locked": False})
    assert status == 200 and resp["locked"] is False
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 200


async def test_deactivate_and_reactivate_through_put(hs: Harness, admin: str) -> None:
    bob, token = await hs.register("bob")
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"deactivated": True})
    assert status == 200 and resp["deactivated"] is True
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 401
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"deactivated": False})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    body = {"deactivated": False, "password": "back-again"}
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, body)
    assert status == 200 and resp["deactivated"] is False
    status, _ = await login(hs, "bob", "back-again")
    assert status == 200


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"admin": "yes"}, "M_BAD_JSON"),
        ({"password": 3}, "M_BAD_JSON"),
        ({"locked": 1}, "M_BAD_JSON"),
        ({"displayname": 5}, "M_BAD_JSON"),
        ({"avatar_url": "http://example.org/a.png"}, "M_INVALID_PARAM"),
        ({"threepids": [{"medium": "fax", "address": "1"}]}, "M_INVALID_PARAM"),
        ({"threepids": [{"medium": "email", "address": "nope"}]}, "M_INVALID_PARAM"),
        ({"threepids": [{"medium": "msisdn", "address": "12a"}]}, "M_INVALID_PARAM"),
        ({"threepids": "a@b.c"}, "M_BAD_JSON"),
        ({"threepids": ["a@b.c"]}, "M_BAD_JSON"),
        ({"external_ids": [{"auth_provider": "", "external_id": "y"}]}, "M_BAD_JSON"),
        ({"external_ids": [{"auth_provider": "oidc-x"}]}, "M_BAD_JSON"),
        ({"external_ids": {"oidc-x": "y"}}, "M_BAD_JSON"),
        ({"user_type": "robot"}, "M_INVALID_PARAM"),
        ({"user_type": 5}, "M_BAD_JSON"),
        ({"password": "x" * 600}, "M_INVALID_PARAM"),
    ],
)
async def test_put_user_bad_input(
    hs: Harness, admin: str, body: dict[str, Any], errcode: str
) -> None:
    for target in ("@bob:test.local", "@brandnew:test.local"):
        if target == "@bob:test.local":
            await hs.register("bob")
        status, resp = await hs.request("PUT", f"{V2}/users/{target}", admin, body)
        assert (status, resp["errcode"]) == (400, errcode), (target, body)
    assert not await hs.services.account_store.user_exists("@brandnew:test.local")


async def test_threepids_and_user_types(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    carol, _ = await hs.register("carol")
    body = {
        "threepids": [
            {"medium": "email", "address": " Bob@Example.ORG"},
            {"medium": "msisdn", "address": "+4412345"},
        ],
        "user_type": "bot",
    }
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, body)
    assert status == 200, resp
    assert resp["user_type"] == "bot"
    assert [(t["medium"], t["address"]) for t in resp["threepids"]] == [
        ("email", "bob@example.org"),
        ("msisdn", "4412345"),
    ]
    assert all(t["added_at"] == t["validated_at"] > 0 for t in resp["threepids"])
    status, resp = await hs.request("GET", f"{V1}/threepid/email/users/BOB@example.org", admin)
    assert (status, resp) == (200, {"user_id": bob})
    status, resp = await hs.request("GET", f"{V1}/threepid/email/users/x@example.org", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V1}/threepid/fax/users/1", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    # An address belongs to one account: nothing changes for carol (nor a new user).
    taken = {"threepids": [{"medium": "email", "address": "bob@example.org"}], "admin": True}
    for target in (carol, f"@dave:{HS}"):
        status, resp = await hs.request("PUT", f"{V2}/users/{target}", admin, taken)
        assert (status, resp["errcode"]) == (409, "M_THREEPID_IN_USE"), target
    status, resp = await hs.request("GET", f"{V2}/users/{carol}", admin)
    assert resp["admin"] is False and resp["threepids"] == []
    assert not await hs.services.account_store.user_exists(f"@dave:{HS}")
    # not_user_type leaves types out ("" stands for no type).
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"not_user_type": "bot"})
    assert bob not in [u["name"] for u in resp["users"]] and resp["total"] == 2
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"not_user_type": ""})
    assert [u["name"] for u in resp["users"]] == [bob]
    status, resp = await hs.request("GET", f"{V2}/users", admin, params={"order_by": "user_type"})
    assert [u["name"] for u in resp["users"]][-1] == bob
    # Replacing the list keeps what stays, drops the rest; deactivation drops them all.
    body = {"threepids": [{"medium": "msisdn", "address": "4412345"}], "user_type": None}
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, body)
    assert [t["address"] for t in resp["threepids"]] == ["4412345"] and resp["user_type"] is None
    status, resp = await hs.request("PUT", f"{V2}/users/{carol}", admin, taken)
    assert status == 200 and resp["threepids"][0]["address"] == "bob@example.org"
    status, _ = await hs.request("POST", f"{V1}/deactivate/{carol}", admin, {})
    assert status == 200
    status, resp = await hs.request("GET", f"{V1}/threepid/email/users/bob@example.org", admin)
    assert status == 404


async def test_external_ids(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    carol, _ = await hs.register("carol")
    ids = [
        {"auth_provider": "oidc-corp", "external_id": "b-123"},
        {"auth_provider": "ldap", "external_id": "uid=bob"},
    ]
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"external_ids": ids})
    assert status == 200, resp
    assert resp["external_ids"] == sorted(ids, key=lambda e: e["auth_provider"])
    path = f"{V1}/auth_providers/oidc-corp/users/b-123"
    status, resp = await hs.request("GET", path, admin)
    assert (status, resp) == (200, {"user_id": bob})
    status, resp = await hs.request("GET", f"{V1}/auth_providers/oidc-corp/users/nobody", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    # Another user cannot take one (409, nothing changed); replacing drops the rest.
    status, resp = await hs.request("PUT", f"{V2}/users/{carol}", admin, {"external_ids": ids[:1]})
    assert status == 409
    status, resp = await hs.request("PUT", f"{V2}/users/{bob}", admin, {"external_ids": ids[1:]})
    assert resp["external_ids"] == ids[1:]
    status, resp = await hs.request("PUT", f"{V2}/users/{carol}", admin, {"external_ids": ids[:1]})
    assert status == 200 and resp["external_ids"] == ids[:1]
    status, resp = await hs.request("GET", path, admin)
    assert resp == {"user_id": carol}


async def test_put_user_refusals(hs: Harness, admin: str) -> None:
    status, resp = await hs.request("PUT", f"{V2}/users/@root:{HS}", admin, {"admin": False})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request("PUT", f"{V2}/users/@x:elsewhere.org", admin, {})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request("PUT", f"{V2}/users/@UPPER:{HS}", admin, {})
    assert (status, resp["errcode"]) == (400, "M_INVALID_USERNAME")
    status, resp = await hs.request("PUT", f"{V2}/users/@bob:{HS}", admin, raw=b"[1]")
    assert (status, resp["errcode"]) == (400, "M_NOT_JSON")


async def test_deactivate_with_erase(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    _, alice_token = await hs.register("alice")
    room = await hs.create_room(alice_token, preset="public_chat")
    status, _ = await hs.request("POST", f"/_matrix/client/v3/join/{room}", bob_token, {})
    assert status == 200
    status, resp = await hs.request("POST", f"{V1}/deactivate/{bob}", admin, {"erase": True})
    assert status == 200 and resp == {"id_server_unbind_result": "success"}
    status, resp = await hs.request("GET", f"{V2}/users/{bob}", admin)
    assert resp["deactivated"] is True and resp["erased"] is True
    assert resp["displayname"] is None
    assert await hs.services.membership_store.get_joined_rooms(bob) == []
    assert await hs.services.account_store.list_devices(bob) == []
    status, resp = await hs.request("POST", f"{V1}/deactivate/{bob}", admin, {"erase": "yes"})
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
    status, resp = await hs.request("POST", f"{V1}/deactivate/@ghost:{HS}", admin, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    # an empty body is allowed
    carol, _ = await hs.register("carol")
    status, _ = await hs.request("POST", f"{V1}/deactivate/{carol}", admin)
    assert status == 200
    status, resp = await hs.request("GET", f"{V2}/users/{carol}", admin)
    assert resp["deactivated"] is True and resp["erased"] is False


async def test_reset_password(hs: Harness, admin: str) -> None:
    bob, token = await hs.register("bob")
    body = {"new_password": "fresh", "logout_devices": False}
    status, resp = await hs.request("POST", f"{V1}/reset_password/{bob}", admin, body)
    assert (status, resp) == (200, {})
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 200
    status, _ = await login(hs, "bob", "fresh")
    assert status == 200
    status, _ = await hs.request("POST", f"{V1}/reset_password/{bob}", admin, {"new_password": "x"})
    assert status == 200
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 401
    for body, errcode in [
        ({}, "M_MISSING_PARAM"),
        ({"new_password": 5}, "M_BAD_JSON"),
        ({"new_password": ""}, "M_WEAK_PASSWORD"),
        ({"new_password": "ok", "logout_devices": "no"}, "M_BAD_JSON"),
    ]:
        status, resp = await hs.request("POST", f"{V1}/reset_password/{bob}", admin, body)
        assert (status, resp["errcode"]) == (400, errcode), body
    status, resp = await hs.request(
        "POST", f"{V1}/reset_password/@ghost:{HS}", admin, {"new_password": "x"}
    )
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_admin_flag(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/admin", admin)
    assert (status, resp) == (200, {"admin": False})
    status, resp = await hs.request("PUT", f"{V1}/users/{bob}/admin", admin, {"admin": True})
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", f"{V2}/users", bob_token)  # bob is an admin now
    assert status == 200
    status, resp = await hs.request("PUT", f"{V1}/users/@root:{HS}/admin", admin, {"admin": False})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request("PUT", f"{V1}/users/{bob}/admin", admin, {})
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_devices_and_whois(hs: Harness, admin: str) -> None:
    bob, token = await hs.register("bob")
    store = hs.services.account_store
    await store.upsert_device(bob, "DEV", last_seen_ts=99, last_seen_ip="10.0.0.1")
    status, resp = await hs.request("GET", f"{V1}/whois/{bob}", admin)
    assert status == 200
    connection = resp["devices"]["DEV"]["sessions"][0]["connections"][0]
    assert resp["user_id"] == bob and connection["ip"] == "10.0.0.1"
    assert connection["last_seen"] == 99
    # Every authenticated request records where, when and with what the device was seen.
    before = int(time.time() * 1000)
    ua = "Element/1.11 " + "x" * 600
    async with hs.client.get(
        "/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {token}", "User-Agent": ua},
    ) as r:
        assert r.status == 200
    status, resp = await hs.request("GET", f"{V1}/whois/{bob}", admin)
    connection = resp["devices"]["DEV"]["sessions"][0]["connections"][0]
    assert connection["ip"] == "127.0.0.1" and connection["last_seen"] >= before
    assert connection["user_agent"] == ua[:512]
    status, resp = await hs.request("GET", f"{V2}/users/{bob}/devices/DEV", admin)
    assert resp["last_seen_user_agent"] == ua[:512] and resp["last_seen_ip"] == "127.0.0.1"
    # The spec's endpoint: the same answer, for an admin or the user themselves only.
    client_whois = f"/_matrix/client/v3/admin/whois/{bob}"
    status, mine = await hs.request("GET", client_whois, token)
    seen = mine["devices"]["DEV"]["sessions"][0]["connections"][0]
    assert status == 200 and seen["ip"] == "127.0.0.1" and "aiohttp" in seen["user_agent"]
    status, theirs = await hs.request("GET", client_whois, admin)
    assert status == 200 and theirs["user_id"] == bob
    _, other = await hs.register("nosy")
    status, resp = await hs.request("GET", client_whois, other)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    status, resp = await hs.request(
        "POST", f"{V2}/users/{bob}/devices", admin, {"device_id": "NEW"}
    )
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", f"{V2}/users/{bob}/devices", admin)
    assert resp["total"] == 2 and [d["device_id"] for d in resp["devices"]] == ["DEV", "NEW"]
    status, resp = await hs.request(
        "PUT", f"{V2}/users/{bob}/devices/NEW", admin, {"display_name": "Phone"}
    )
    assert status == 200
    status, resp = await hs.request("GET", f"{V2}/users/{bob}/devices/NEW", admin)
    assert resp["display_name"] == "Phone" and resp["user_id"] == bob
    status, resp = await hs.request("GET", f"{V2}/users/{bob}/devices/NOPE", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request(
        "PUT", f"{V2}/users/{bob}/devices/NOPE", admin, {"display_name": "x"}
    )
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("DELETE", f"{V2}/users/{bob}/devices/DEV", admin)
    assert status == 200
    status, _ = await hs.request("GET", "/_matrix/client/v3/account/whoami", token)
    assert status == 401  # the device's token went with it
    status, resp = await hs.request(
        "POST", f"{V2}/users/{bob}/delete_devices", admin, {"devices": ["NEW", "GONE"]}
    )
    assert status == 200
    assert await store.list_devices(bob) == []
    for path, body, errcode in [
        ("devices", {}, "M_MISSING_PARAM"),
        ("devices", {"device_id": 7}, "M_INVALID_PARAM"),
        ("devices", {"device_id": "x" * 300}, "M_INVALID_PARAM"),
        ("delete_devices", {}, "M_MISSING_PARAM"),
        ("delete_devices", {"devices": "DEV"}, "M_BAD_JSON"),
        ("delete_devices", {"devices": [1]}, "M_INVALID_PARAM"),
    ]:
        status, resp = await hs.request("POST", f"{V2}/users/{bob}/{path}", admin, body)
        assert (status, resp["errcode"]) == (400, errcode), (path, body)
    status, resp = await hs.request("GET", f"{V2}/users/@ghost:{HS}/devices", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_rooms_of_a_user(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    room_a = await hs.create_room(bob_token)
    room_b = await hs.create_room(bob_token)
    status, _ = await hs.request("POST", f"/_matrix/client/v3/rooms/{room_b}/leave", bob_token, {})
    assert status == 200
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/joined_rooms", admin)
    assert (status, resp) == (200, {"joined_rooms": [room_a], "total": 1})
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/memberships", admin)
    assert resp == {"memberships": {room_a: "join", room_b: "leave"}}
    status, resp = await hs.request("GET", f"{V1}/users/@ghost:{HS}/joined_rooms", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_login_as_user(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    status, resp = await hs.request("POST", f"{V1}/users/{bob}/login", admin, {})
    assert status == 200, resp
    puppet = resp["access_token"]
    status, resp = await hs.request("GET", "/_matrix/client/v3/account/whoami", puppet)
    assert status == 200 and resp["user_id"] == bob
    # no new device appears
    assert [d.device_id for d in await hs.services.account_store.list_devices(bob)] == ["DEV"]
    status, resp = await hs.request("POST", f"{V1}/users/{bob}/login", admin, {"valid_until_ms": 1})
    assert status == 200
    status, resp = await hs.request(
        "GET", "/_matrix/client/v3/account/whoami", resp["access_token"]
    )
    assert (status, resp["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, resp = await hs.request("POST", f"{V1}/users/@root:{HS}/login", admin, {})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request(
        "POST", f"{V1}/users/{bob}/login", admin, {"valid_until_ms": "soon"}
    )
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request("POST", f"{V1}/users/@ghost:{HS}/login", admin, {})
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_shadow_ban_flag(hs: Harness, admin: str) -> None:
    bob, _ = await hs.register("bob")
    status, resp = await hs.request("POST", f"{V1}/users/{bob}/shadow_ban", admin)
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", f"{V2}/users/{bob}", admin)
    assert resp["shadow_banned"] is True
    status, resp = await hs.request("DELETE", f"{V1}/users/{bob}/shadow_ban", admin)
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", f"{V2}/users/{bob}", admin)
    assert resp["shadow_banned"] is False
    status, resp = await hs.request("POST", f"{V1}/users/@ghost:{HS}/shadow_ban", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_username_available(hs: Harness, admin: str) -> None:
    await hs.register("bob")
    status, resp = await hs.request("GET", f"{V1}/username_available?username=free", admin)
    assert (status, resp) == (200, {"available": True})
    status, resp = await hs.request("GET", f"{V1}/username_available?username=bob", admin)
    assert (status, resp["errcode"]) == (400, "M_USER_IN_USE")
    status, resp = await hs.request("GET", f"{V1}/username_available?username=B%20d", admin)
    assert (status, resp["errcode"]) == (400, "M_INVALID_USERNAME")
    status, resp = await hs.request("GET", f"{V1}/username_available", admin)
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_shadow_banned_sends_reach_nobody(hs: Harness, admin: str) -> None:
    _, alice_token = await hs.register("alice")
    bob, bob_token = await hs.register("bob")
    carol, _ = await hs.register("carol")
    room = await hs.create_room(alice_token, name="Quiet", preset="public_chat")
    status, _ = await hs.request("POST", f"/_matrix/client/v3/join/{room}", bob_token, {})
    assert status == 200
    real = await hs.send_message(bob_token, room, "before the ban")
    status, _ = await hs.request("POST", f"{V1}/users/{bob}/shadow_ban", admin)
    assert status == 200
    c = f"/_matrix/client/v3/rooms/{room}"
    status, resp = await hs.request(
        "PUT", f"{c}/send/m.room.message/t9", bob_token, {"msgtype": "m.text", "body": "spam"}
    )
    assert status == 200 and resp["event_id"].startswith("$")
    fake = resp["event_id"]
    status, resp = await hs.request("PUT", f"{c}/state/m.room.topic", bob_token, {"topic": "x"})
    assert status == 200 and resp["event_id"].startswith("$")
    status, resp = await hs.request("PUT", f"{c}/redact/{real}/t10", bob_token, {})
    assert status == 200 and resp["event_id"].startswith("$")
    status, resp = await hs.request("POST", f"{c}/invite", bob_token, {"user_id": carol})
    assert (status, resp) == (200, {})
    status, resp = await hs.request(
        "POST", "/_matrix/client/v3/createRoom", bob_token, {"invite": [carol]}
    )
    assert status == 200
    # nothing reached the room or carol
    status, resp = await hs.request("GET", f"{c}/messages", alice_token, params={"dir": "b"})
    bodies = [e["content"].get("body") for e in resp["chunk"]]
    assert "spam" not in bodies and "before the ban" in bodies
    assert fake not in [e["event_id"] for e in resp["chunk"]]
    status, resp = await hs.request("GET", f"{c}/event/{real}", alice_token)
    assert resp["content"]["body"] == "before the ban"  # not redacted
    status, resp = await hs.request("GET", f"{c}/state/m.room.topic/", alice_token)
    assert status == 404
    assert await hs.services.membership_store.get_rooms_for_user(carol) == {}
    # leaving (their own membership) still works
    status, _ = await hs.request("POST", f"{c}/leave", bob_token, {})
    assert status == 200
    assert room not in await hs.services.membership_store.get_joined_rooms(bob)


async def test_account_data(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(bob_token)
    c = f"/_matrix/client/v3/user/{bob}"
    status, _ = await hs.request("PUT", f"{c}/account_data/org.example.pref", bob_token, {"a": 1})
    assert status == 200
    status, _ = await hs.request(
        "PUT", f"{c}/rooms/{room}/account_data/org.example.room", bob_token, {"b": 2}
    )
    assert status == 200
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/accountdata", admin)
    assert status == 200, resp
    assert resp["account_data"]["global"]["org.example.pref"] == {"a": 1}
    assert resp["account_data"]["rooms"][room]["org.example.room"] == {"b": 2}
    status, resp = await hs.request("GET", f"{V1}/users/@ghost:{HS}/accountdata", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V1}/users/{bob}/accountdata", bob_token)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")


async def test_rate_limit_override(hs: Harness, admin: str) -> None:
    bob, bob_token = await hs.register("bob")
    room = await hs.create_room(bob_token)
    path = f"{V1}/users/{bob}/override_ratelimit"
    status, resp = await hs.request("GET", path, admin)
    assert (status, resp) == (200, {})
    # one message, then nothing for a long time
    status, resp = await hs.request(
        "POST", path, admin, {"messages_per_second": 0, "burst_count": 1}
    )
    assert (status, resp) == (200, {"messages_per_second": 0, "burst_count": 1})
    status, resp = await hs.request("GET", path, admin)
    assert resp == {"messages_per_second": 0, "burst_count": 1}
    send = f"/_matrix/client/v3/rooms/{room}/send/m.room.message"
    status, _ = await hs.request("PUT", f"{send}/r1", bob_token, {"msgtype": "m.text", "body": "1"})
    assert status == 200
    status, resp = await hs.request(
        "PUT", f"{send}/r2", bob_token, {"msgtype": "m.text", "body": "2"}
    )
    assert (status, resp["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    # 0/0: no limit at all
    status, _ = await hs.request("POST", path, admin, {})
    assert status == 200
    for i in range(3):
        status, _ = await hs.request(
            "PUT", f"{send}/n{i}", bob_token, {"msgtype": "m.text", "body": str(i)}
        )
        assert status == 200
    status, resp = await hs.request("DELETE", path, admin)
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", path, admin)
    assert resp == {}
    for body in ({"messages_per_second": -1}, {"burst_count": "10"}, {"burst_count": True}):
        status, resp = await hs.request("POST", path, admin, body)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), body
    status, resp = await hs.request("GET", f"{V1}/users/@ghost:{HS}/override_ratelimit", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", path, bob_token)
    assert (status, resp["errcode"]) == (403, "M_FORBIDDEN")
    # what is stored is what the server loads at start
    await hs.services.admin_users.set_rate_limit_override(bob, 5, 7)
    await hs.services.admin_users.load_rate_limit_overrides()
    status, resp = await hs.request("GET", path, admin)
    assert resp == {"messages_per_second": 5, "burst_count": 7}
    # Loading again (a worker that lost the bus) drops an override deleted meanwhile.
    limits = hs.services.rate_limits
    limits.set_message_override_here("@gone:" + HS, RateLimit(0, 1))
    await hs.services.admin_users.load_rate_limit_overrides()
    for _ in range(3):
        await limits.check_message("@gone:" + HS)  # rc_message again, not a burst of 1
