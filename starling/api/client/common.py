"""Helpers every Client-Server handler uses: who is asking, path and query parameters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.accounts.auth import RequestAuthenticator, Requester
from starling.api.client.guests import guest_may_call
from starling.api.http import USER_ID_KEY
from starling.errors import MatrixError, invalid_param, missing_token
from starling.protocol.numbers import parse_int

REQUESTER_KEY = web.RequestKey("requester", Requester)


def access_token_from(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer`, or the deprecated `access_token` query."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise MatrixError(401, "M_MISSING_TOKEN", "Invalid Authorization header")
    query_token = request.query.get("access_token")
    return query_token or None


async def require_user(request: web.Request, auth: RequestAuthenticator) -> Requester:
    """The authenticated requester, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    token = access_token_from(request)
    if token is None:
        raise missing_token()
    requester = await auth.requester_for_token(token)
    if requester.is_guest and not guest_may_call(request.method, request.path):
        raise MatrixError(
            403, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts may not use this endpoint"
        )
    request[USER_ID_KEY] = requester.user_id  # for the access log
    request[REQUESTER_KEY] = requester
    return requester


async def optional_user(request: web.Request, auth: RequestAuthenticator) -> Requester | None:
    if access_token_from(request) is None:
        return None
    return await require_user(request, auth)


def query_int(
    request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = parse_int(raw)
    if value is None:
        raise invalid_param(f"'{name}' must be an integer")
    if value < minimum:
        raise invalid_param(f"'{name}' must be at least {minimum}")
    return min(value, maximum)


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise invalid_param(f"'{name}' must be true or false")


def body_str(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{key}'")
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"'{key}' must be a string")
    return value
