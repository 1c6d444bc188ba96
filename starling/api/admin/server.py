"""Admin API: the server's version and users' media statistics (Synapse:
docs/admin_api/version_api.md, docs/admin_api/statistics.md)."""

from __future__ import annotations

from aiohttp import web

from starling import __version__
from starling.admin.media import AdminMedia
from starling.api.admin.common import backwards
from starling.api.client.common import query_int
from starling.api.http import json_response
from starling.api.routing import Auth, Route, get

MAX_LIMIT = 1000


def _optional_ts(request: web.Request, name: str) -> int | None:
    return query_int(request, name, 0, maximum=2**62) if name in request.query else None


class AdminServerRoutes:
    def __init__(self, media: AdminMedia) -> None:
        self._media = media

    async def server_version(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/server_version
        (Synapse admin API: docs/admin_api/version_api.md)"""
        return json_response({"server_version": f"Starling {__version__}"})

    async def media_statistics(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/statistics/users/media
        (Synapse admin API: docs/admin_api/statistics.md)"""
        return json_response(
            await self._media.usage_by_user(
                order_by=request.query.get("order_by", "user_id"),
                backwards=backwards(request),
                start=query_int(request, "from", 0),
                limit=query_int(request, "limit", 100, maximum=MAX_LIMIT),
                from_ts=_optional_ts(request, "from_ts"),
                until_ts=_optional_ts(request, "until_ts"),
                search=request.query.get("search_term") or None,
            )
        )

    def routes(self) -> list[Route]:
        return [
            # Synapse answers the version without an access token.
            get("/server_version", self.server_version, Auth.NONE),
            get("/statistics/users/media", self.media_statistics, Auth.ADMIN),
        ]
