"""Admin API: shared-secret registration and registration tokens (Synapse's paths).

- ``GET/POST /_synapse/admin/v1/register``: a nonce, then an HMAC-authenticated
  registration (no access token; the shared secret is the credential).
- ``/_synapse/admin/v1/registration_tokens``: list (``?valid=``), create (``/new``),
  read, update and delete tokens; admin access token required.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from starling.accounts.registration_tokens import UNSET, RegistrationToken, RegistrationTokens
from starling.accounts.shared_secret import SharedSecretRegistration
from starling.admin.users import AdminUsers
from starling.api.admin.audit import AdminAuditRoutes, with_audit
from starling.api.admin.federation import FederationDestinationsAdmin
from starling.api.admin.history import AdminHistoryRoutes
from starling.api.admin.media import AdminMediaRoutes
from starling.api.admin.notices import AdminNoticeRoutes
from starling.api.admin.reports import AdminReportRoutes
from starling.api.admin.rooms import AdminRoomRoutes
from starling.api.admin.server import AdminServerRoutes
from starling.api.admin.users import AdminUserRoutes
from starling.api.client.common import body_flag, body_str, query_bool
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, RouteTable, delete, get, post, put
from starling.api.services import Services
from starling.errors import invalid_param, not_found

_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}\Z")
DEFAULT_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 64


def _token_json(token: RegistrationToken) -> dict[str, Any]:
    return {
        "token": token.token,
        "uses_allowed": token.uses_allowed,
        "pending": token.pending,
        "completed": token.completed,
        "expiry_time": token.expiry_time,
    }


def _optional_count(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise invalid_param(f"'{key}' must be a non-negative integer or null")
    return value


def _optional_expiry(body: dict[str, Any]) -> int | None:
    value = body.get("expiry_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise invalid_param("'expiry_time' must be an integer (ms since the epoch) or null")
    if value < time.time() * 1000:
        raise invalid_param("'expiry_time' must not be in the past")
    return value


class AdminRegistrationRoutes:
    def __init__(
        self,
        shared_secret: SharedSecretRegistration,
        tokens: RegistrationTokens,
        users: AdminUsers,
    ) -> None:
        self.shared_secret = shared_secret
        self.tokens = tokens
        self.users = users

    async def get_nonce(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/register
        (Synapse admin API: docs/admin_api/register_api.md)"""
        return json_response({"nonce": self.shared_secret.new_nonce()})

    async def register(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/register
        (Synapse admin API: docs/admin_api/register_api.md)"""
        body = await read_json_object(request)
        nonce = body_str(body, "nonce", required=True)
        username = body_str(body, "username", required=True)
        password = body_str(body, "password", required=True)
        mac = body_str(body, "mac", required=True)
        displayname = body_str(body, "displayname")
        user_type = body_str(body, "user_type")
        admin = body_flag(body, "admin")
        assert nonce is not None and username is not None
        assert password is not None and mac is not None
        result = await self.users.register_with_shared_secret(
            nonce,
            username,
            password,
            mac,
            admin=admin,
            user_type=user_type,
            displayname=displayname,
        )
        return json_response(result)

    async def list_tokens(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/registration_tokens
        (Synapse admin API: docs/admin_api/registration_tokens.md)"""
        valid = query_bool(request, "valid") if "valid" in request.query else None
        tokens = await self.tokens.list(valid)
        return json_response({"registration_tokens": [_token_json(t) for t in tokens]})

    async def create_token(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/registration_tokens/new
        (Synapse admin API: docs/admin_api/registration_tokens.md)"""
        body = await read_json_object(request, allow_empty=True)
        uses_allowed = _optional_count(body, "uses_allowed")
        expiry_time = _optional_expiry(body)
        token = None
        length = DEFAULT_TOKEN_LENGTH
        if "token" in body:
            token = body["token"]
            if not isinstance(token, str) or not _TOKEN_RE.match(token):
                raise invalid_param(
                    "'token' must be 1-64 characters from A-Z, a-z, 0-9 and . _ ~ -"
                )
        else:
            length = body.get("length", DEFAULT_TOKEN_LENGTH)
            if isinstance(length, bool) or not isinstance(length, int):
                raise invalid_param("'length' must be an integer")
            if not 0 < length <= MAX_TOKEN_LENGTH:
                raise invalid_param(f"'length' must be between 1 and {MAX_TOKEN_LENGTH}")
        created = await self.tokens.create(token, length, uses_allowed, expiry_time)
        return json_response(_token_json(created))

    async def get_token(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/registration_tokens/{token}
        (Synapse admin API: docs/admin_api/registration_tokens.md)"""
        found = await self.tokens.get(request.match_info["token"])
        if found is None:
            raise not_found("No such registration token")
        return json_response(_token_json(found))

    async def update_token(self, request: web.Request) -> web.Response:
        """PUT /_synapse/admin/v1/registration_tokens/{token}
        (Synapse admin API: docs/admin_api/registration_tokens.md)"""
        body = await read_json_object(request, allow_empty=True)
        changes: dict[str, Any] = {"uses_allowed": UNSET, "expiry_time": UNSET}
        if "uses_allowed" in body:
            changes["uses_allowed"] = _optional_count(body, "uses_allowed")
        if "expiry_time" in body:
            changes["expiry_time"] = _optional_expiry(body)
        updated = await self.tokens.update(request.match_info["token"], **changes)
        if updated is None:
            raise not_found("No such registration token")
        return json_response(_token_json(updated))

    async def delete_token(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/registration_tokens/{token}
        (Synapse admin API: docs/admin_api/registration_tokens.md)"""
        if not await self.tokens.delete(request.match_info["token"]):
            raise not_found("No such registration token")
        return json_response({})


def admin_table(svc: Services) -> RouteTable:
    """The admin API on Synapse's paths (/_synapse/admin/v1)."""
    r = AdminRegistrationRoutes(
        svc.shared_secret_registration, svc.registration_tokens, svc.admin_users
    )
    routes = [
        # Shared-secret registration: the HMAC over the nonce is the credential.
        get("/register", r.get_nonce, Auth.NONE),
        post("/register", r.register, Auth.NONE),
        get("/registration_tokens", r.list_tokens, Auth.ADMIN),
        post("/registration_tokens/new", r.create_token, Auth.ADMIN),
        get("/registration_tokens/{token}", r.get_token, Auth.ADMIN),
        put("/registration_tokens/{token}", r.update_token, Auth.ADMIN),
        delete("/registration_tokens/{token}", r.delete_token, Auth.ADMIN),
        # federation destinations: list, one, reset_connection
        *FederationDestinationsAdmin(svc.federation_sender).routes(),
        # users: list, query, create/modify, deactivate, devices, rooms, login as
        *AdminUserRoutes(svc.admin_users).routes(),
        # rooms: list, details, members, state, block, delete (and its status), join
        *AdminRoomRoutes(svc.admin_rooms).routes(),
        # history: purge (and its status), redact a user's events (and its status)
        *AdminHistoryRoutes(svc.admin_history, svc.admin_rooms).routes(),
        # media: per user and room, quarantine, protection, deletion, remote cache
        *AdminMediaRoutes(svc.admin_media).routes(),
        # what users reported
        *AdminReportRoutes(svc.reports).routes(),
        *AdminNoticeRoutes(svc.server_notices).routes(),
        *AdminServerRoutes(svc.admin_media).routes(),
        *AdminAuditRoutes(svc.audit_log).routes(),
    ]
    # Every change an admin makes goes into the audit log.
    return RouteTable(
        "admin", "/_synapse/admin/{version}", ("v1",), with_audit(routes, svc.audit_log)
    )
