"""Admin API: user accounts on Synapse's paths (Synapse: docs/admin_api/user_admin_api.md).

Handlers parse and check the request, call `AdminUsers`, and answer in Synapse's shapes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.admin.users import AdminUsers, UserChanges, UserFilter
from starling.api.admin.common import backwards, body_bool, optional_bool_query
from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, delete, get, post, put, requester_of
from starling.errors import bad_json, forbidden, invalid_param, missing_param
from starling.profile.service import validate_field

MAX_LIMIT = 1000
MAX_DEVICE_ID_LENGTH = 255
MAX_DEVICES_PER_REQUEST = 1000


def _device_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_DEVICE_ID_LENGTH:
        raise invalid_param(f"A device ID must be a string of 1 to {MAX_DEVICE_ID_LENGTH} chars")
    return value


MAX_THREEPIDS = 100
MAX_ADDRESS_LENGTH = 320


def canonical_threepid(medium: Any, address: Any) -> tuple[str, str]:
    """(medium, address) as stored: e-mail addresses lower-cased (Synapse's
    canonicalise_email), phone numbers as digits; 400 for anything else."""
    if medium not in ("email", "msisdn"):
        raise invalid_param("'medium' must be 'email' or 'msisdn'")
    if not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS_LENGTH:
        raise invalid_param("'address' must be a non-empty string")
    address = address.strip()
    if medium == "email":
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in address):
            raise invalid_param(f"{address[:80]!r} is not an e-mail address")
        return medium, f"{local}@{domain}".lower()
    digits = address.removeprefix("+")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise invalid_param(f"{address[:80]!r} is not a phone number (digits only)")
    return medium, digits


def _threepids(value: Any) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_THREEPIDS:
        raise bad_json(f"'threepids' must be a list of at most {MAX_THREEPIDS} objects")
    out: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_json("Each of 'threepids' must be an object with 'medium' and 'address'")
        pair = canonical_threepid(item.get("medium"), item.get("address"))
        if pair not in out:
            out.append(pair)
    return out


MAX_EXTERNAL_ID_LENGTH = 512


def _external_ids(value: Any) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_THREEPIDS:
        raise bad_json(f"'external_ids' must be a list of at most {MAX_THREEPIDS} objects")
    out: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_json("Each of 'external_ids' must be an object")
        pair = (item.get("auth_provider"), item.get("external_id"))
        for name, part in zip(("auth_provider", "external_id"), pair, strict=True):
            if not isinstance(part, str) or not 0 < len(part) <= MAX_EXTERNAL_ID_LENGTH:
                raise bad_json(f"'{name}' must be a non-empty string (at most 512 characters)")
        if pair not in out:
            out.append((str(pair[0]), str(pair[1])))
    return out


def _user_filter(request: web.Request, *, v3: bool) -> UserFilter:
    name = request.query.get("name")
    user_id = request.query.get("user_id")
    if v3:
        deactivated = optional_bool_query(request, "deactivated")
    else:
        deactivated = None if query_bool(request, "deactivated", False) else False
    return UserFilter(
        user_id=user_id or None,
        name=name or None,
        guests=query_bool(request, "guests", True),
        admins=optional_bool_query(request, "admins"),
        deactivated=deactivated,
        locked=query_bool(request, "locked", False),
        approved=optional_bool_query(request, "approved"),
        not_user_types=tuple(request.query.getall("not_user_type", [])[:20]),
    )


class AdminUserRoutes:
    def __init__(self, users: AdminUsers) -> None:
        self._users = users

    async def list_users(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/users and /_synapse/admin/v3/users
        (Synapse admin API: docs/admin_api/user_admin_api.md#list-accounts)"""
        v3 = request.path.startswith("/_synapse/admin/v3/")
        body = await self._users.list_users(
            _user_filter(request, v3=v3),
            request.query.get("order_by", "name"),
            backwards(request),
            query_int(request, "from", 0),
            query_int(request, "limit", 100, maximum=MAX_LIMIT),
        )
        return json_response(body)

    async def get_user(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/users/{userId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#query-user-account)"""
        return json_response(await self._users.get_user(request.match_info["userId"]))

    async def put_user(self, request: web.Request) -> web.Response:
        """PUT /_synapse/admin/v2/users/{userId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#create-or-modify-account)"""
        user_id = request.match_info["userId"]
        body = await read_json_object(request, allow_empty=True)
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise bad_json("'password' must be a string")
        user_type = body.get("user_type")
        if user_type is not None and not isinstance(user_type, str):
            raise bad_json("'user_type' must be a string or null")
        logout = body_bool(body, "logout_devices")
        changes = UserChanges(
            password=password,
            logout_devices=True if logout is None else logout,
            displayname=validate_field("displayname", body.get("displayname")),
            avatar_url=validate_field("avatar_url", body.get("avatar_url")),
            set_displayname="displayname" in body,
            set_avatar_url="avatar_url" in body,
            admin=body_bool(body, "admin"),
            deactivated=body_bool(body, "deactivated"),
            locked=body_bool(body, "locked"),
            approved=body_bool(body, "approved"),
            threepids=_threepids(body.get("threepids")),
            external_ids=_external_ids(body.get("external_ids")),
            user_type=user_type,
            set_user_type="user_type" in body,
        )
        created = await self._users.put_user(requester_of(request).user_id, user_id, changes)
        return json_response(await self._users.get_user(user_id), status=201 if created else 200)

    async def deactivate(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/deactivate/{userId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#deactivate-account)"""
        body = await read_json_object(request, allow_empty=True)
        erase = body_bool(body, "erase") or False
        await self._users.deactivate(request.match_info["userId"], erase=erase)
        return json_response({"id_server_unbind_result": "success"})

    async def reset_password(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/reset_password/{userId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#reset-password)"""
        body = await read_json_object(request)
        password = body.get("new_password")
        if password is None:
            raise missing_param("Missing 'new_password'")
        if not isinstance(password, str):
            raise bad_json("'new_password' must be a string")
        logout = body_bool(body, "logout_devices")
        await self._users.reset_password(
            request.match_info["userId"], password, True if logout is None else logout
        )
        return json_response({})

    async def get_admin(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/admin
        (Synapse admin API: docs/admin_api/user_admin_api.md)"""
        return json_response({"admin": await self._users.is_admin(request.match_info["userId"])})

    async def put_admin(self, request: web.Request) -> web.Response:
        """PUT /_synapse/admin/v1/users/{userId}/admin
        (Synapse admin API: docs/admin_api/user_admin_api.md)"""
        body = await read_json_object(request)
        admin = body_bool(body, "admin")
        if admin is None:
            raise missing_param("Missing 'admin'")
        await self._users.set_admin(
            requester_of(request).user_id, request.match_info["userId"], admin
        )
        return json_response({})

    async def whois(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/whois/{userId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#query-current-sessions-for-a-user)"""
        return json_response(await self._users.whois(request.match_info["userId"]))

    async def client_whois(self, request: web.Request) -> web.Response:
        """GET /_matrix/client/v3/admin/whois/{userId}
        (spec: client-server-api/#get_matrixclientv3adminwhoisuserid): the same answer,
        for a server admin or for the user themselves (as Synapse allows)."""
        user_id = request.match_info["userId"]
        requester = requester_of(request)
        if not requester.is_admin and requester.user_id != user_id:
            raise forbidden("You are not a server admin")
        return json_response(await self._users.whois(user_id))

    async def list_devices(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/users/{userId}/devices
        (Synapse admin API: docs/admin_api/user_admin_api.md#list-all-devices)"""
        devices = await self._users.devices(request.match_info["userId"])
        return json_response({"devices": devices, "total": len(devices)})

    async def create_device(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v2/users/{userId}/devices
        (Synapse admin API: docs/admin_api/user_admin_api.md#create-a-device)"""
        body = await read_json_object(request)
        if "device_id" not in body:
            raise missing_param("Missing 'device_id'")
        await self._users.create_device(request.match_info["userId"], _device_id(body["device_id"]))
        return json_response({})

    async def delete_devices(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v2/users/{userId}/delete_devices
        (Synapse admin API: docs/admin_api/user_admin_api.md#delete-multiple-devices)"""
        body = await read_json_object(request)
        devices = body.get("devices")
        if devices is None:
            raise missing_param("Missing 'devices'")
        if not isinstance(devices, list) or len(devices) > MAX_DEVICES_PER_REQUEST:
            raise bad_json(f"'devices' must be a list of at most {MAX_DEVICES_PER_REQUEST}")
        await self._users.delete_devices(
            request.match_info["userId"], [_device_id(d) for d in devices]
        )
        return json_response({})

    async def get_device(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#show-a-device)"""
        return json_response(
            await self._users.device(
                request.match_info["userId"], _device_id(request.match_info["deviceId"])
            )
        )

    async def put_device(self, request: web.Request) -> web.Response:
        """PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#update-a-device)"""
        body = await read_json_object(request, allow_empty=True)
        user_id = request.match_info["userId"]
        device_id = _device_id(request.match_info["deviceId"])
        if "display_name" in body:
            name = body["display_name"]
            if name is not None and not isinstance(name, str):
                raise bad_json("'display_name' must be a string")
            await self._users.rename_device(user_id, device_id, name)
        else:
            await self._users.device(user_id, device_id)  # 404 for an unknown device
        return json_response({})

    async def delete_device(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#delete-a-device)"""
        await self._users.delete_devices(
            request.match_info["userId"], [_device_id(request.match_info["deviceId"])]
        )
        return json_response({})

    async def joined_rooms(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/joined_rooms
        (Synapse admin API: docs/admin_api/user_admin_api.md#list-joined-rooms-of-a-user)"""
        rooms = await self._users.joined_rooms(request.match_info["userId"])
        return json_response({"joined_rooms": rooms, "total": len(rooms)})

    async def memberships(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/memberships
        (Synapse admin API: docs/admin_api/user_admin_api.md#list-room-memberships-of-a-user)"""
        return json_response(
            {"memberships": await self._users.memberships(request.match_info["userId"])}
        )

    async def login_as(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/users/{userId}/login
        (Synapse admin API: docs/admin_api/user_admin_api.md#login-as-a-user)"""
        body = await read_json_object(request, allow_empty=True)
        valid_until = body.get("valid_until_ms")
        if valid_until is not None and (
            isinstance(valid_until, bool) or not isinstance(valid_until, int) or valid_until < 0
        ):
            raise invalid_param("'valid_until_ms' must be a non-negative integer")
        token = await self._users.login_as(
            requester_of(request).user_id, request.match_info["userId"], valid_until
        )
        return json_response({"access_token": token})

    async def shadow_ban(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/users/{userId}/shadow_ban
        (Synapse admin API: docs/admin_api/user_admin_api.md#controlling-whether-a-user-is-shadow-banned)"""
        await self._users.set_shadow_banned(request.match_info["userId"], True)
        return json_response({})

    async def unshadow_ban(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/users/{userId}/shadow_ban
        (Synapse admin API: docs/admin_api/user_admin_api.md#controlling-whether-a-user-is-shadow-banned)"""
        await self._users.set_shadow_banned(request.match_info["userId"], False)
        return json_response({})

    async def account_data(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/accountdata
        (Synapse admin API: docs/admin_api/user_admin_api.md#account-data)"""
        return json_response(await self._users.account_data(request.match_info["userId"]))

    async def get_rate_limit(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/override_ratelimit
        (Synapse admin API: docs/admin_api/user_admin_api.md#override-ratelimiting-for-users)"""
        return json_response(await self._users.rate_limit_override(request.match_info["userId"]))

    async def set_rate_limit(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/users/{userId}/override_ratelimit
        (Synapse admin API: docs/admin_api/user_admin_api.md#set-ratelimit)"""
        body = await read_json_object(request, allow_empty=True)
        values = []
        for key in ("messages_per_second", "burst_count"):
            value = body.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise invalid_param(f"'{key}' must be a non-negative integer")
            values.append(value)
        return json_response(
            await self._users.set_rate_limit_override(
                request.match_info["userId"], values[0], values[1]
            )
        )

    async def delete_rate_limit(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit
        (Synapse admin API: docs/admin_api/user_admin_api.md#delete-ratelimit)"""
        await self._users.delete_rate_limit_override(request.match_info["userId"])
        return json_response({})

    async def username_available(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/username_available?username=
        (Synapse admin API: docs/admin_api/user_admin_api.md#check-username-availability)"""
        username = request.query.get("username")
        if not username:
            raise missing_param("Missing 'username'")
        await self._users.username_available(username)
        return json_response({"available": True})

    async def user_by_threepid(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/threepid/{medium}/users/{address}
        (Synapse admin API: docs/admin_api/user_admin_api.md#find-a-user-based-on-their-third-party-id-threepid-or-3pid)"""
        medium, address = canonical_threepid(
            request.match_info["medium"], request.match_info["address"]
        )
        return json_response({"user_id": await self._users.user_by_threepid(medium, address)})

    async def user_by_external_id(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/auth_providers/{provider}/users/{externalId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#find-a-user-based-on-their-id-in-an-auth-provider)"""
        user_id = await self._users.user_by_external_id(
            request.match_info["provider"], request.match_info["externalId"]
        )
        return json_response({"user_id": user_id})

    def routes(self) -> list[Route]:
        v2 = ("v2",)
        return [
            get("/users", self.list_users, Auth.ADMIN, versions=("v2", "v3")),
            get("/users/{userId}", self.get_user, Auth.ADMIN, versions=v2),
            put("/users/{userId}", self.put_user, Auth.ADMIN, versions=v2),
            post("/deactivate/{userId}", self.deactivate, Auth.ADMIN),
            post("/reset_password/{userId}", self.reset_password, Auth.ADMIN),
            get("/users/{userId}/admin", self.get_admin, Auth.ADMIN),
            put("/users/{userId}/admin", self.put_admin, Auth.ADMIN),
            get("/whois/{userId}", self.whois, Auth.ADMIN),
            get("/users/{userId}/devices", self.list_devices, Auth.ADMIN, versions=v2),
            post("/users/{userId}/devices", self.create_device, Auth.ADMIN, versions=v2),
            post("/users/{userId}/delete_devices", self.delete_devices, Auth.ADMIN, versions=v2),
            get("/users/{userId}/devices/{deviceId}", self.get_device, Auth.ADMIN, versions=v2),
            put("/users/{userId}/devices/{deviceId}", self.put_device, Auth.ADMIN, versions=v2),
            delete(
                "/users/{userId}/devices/{deviceId}", self.delete_device, Auth.ADMIN, versions=v2
            ),
            get("/users/{userId}/joined_rooms", self.joined_rooms, Auth.ADMIN),
            get("/users/{userId}/memberships", self.memberships, Auth.ADMIN),
            post("/users/{userId}/login", self.login_as, Auth.ADMIN),
            post("/users/{userId}/shadow_ban", self.shadow_ban, Auth.ADMIN),
            delete("/users/{userId}/shadow_ban", self.unshadow_ban, Auth.ADMIN),
            get("/users/{userId}/accountdata", self.account_data, Auth.ADMIN),
            get("/users/{userId}/override_ratelimit", self.get_rate_limit, Auth.ADMIN),
            post("/users/{userId}/override_ratelimit", self.set_rate_limit, Auth.ADMIN),
            delete("/users/{userId}/override_ratelimit", self.delete_rate_limit, Auth.ADMIN),
            get("/username_available", self.username_available, Auth.ADMIN),
            get("/threepid/{medium}/users/{address}", self.user_by_threepid, Auth.ADMIN),
            get(
                "/auth_providers/{provider}/users/{externalId}",
                self.user_by_external_id,
                Auth.ADMIN,
            ),
        ]
