"""Parameters every admin route group reads the same way (Synapse's conventions)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.client.common import query_bool
from starling.errors import bad_json, invalid_param


def optional_bool_query(request: web.Request, name: str) -> bool | None:
    return query_bool(request, name) if name in request.query else None


def body_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_json(f"'{key}' must be a boolean")
    return value


def backwards(request: web.Request) -> bool:
    """True for backwards (``dir=b``)."""
    value = request.query.get("dir", "f")
    if value not in ("f", "b"):
        raise invalid_param("Unknown direction: 'dir' must be 'f' or 'b'")
    return value == "b"
