"""GET /_matrix/federation/v1/version (spec: server-server-api/#get_matrixfederationv1version)."""

from __future__ import annotations

from aiohttp import web

from starling import __version__
from starling.api.http import json_response


async def version(request: web.Request) -> web.Response:
    """GET /_matrix/federation/v1/version — implementation name and version
    (spec: server-server-api/#get_matrixfederationv1version)."""
    return json_response({"server": {"name": "Starling", "version": __version__}})
