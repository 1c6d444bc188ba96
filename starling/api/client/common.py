"""Helpers Client-Server handlers share: query parameters and body fields."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.errors import MatrixError, invalid_param
from starling.protocol.numbers import parse_int


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


def body_flag(body: dict[str, Any], key: str, default: bool = False, *, where: str = "") -> bool:
    """A boolean field, `default` when absent (null is no boolean); `where` prefixes the
    key in the error (a nested object's path)."""
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise MatrixError(400, "M_BAD_JSON", f"'{where}{key}' must be a boolean")
    return value


def body_str(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{key}'")
        return None
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"'{key}' must be a string")
    return value
