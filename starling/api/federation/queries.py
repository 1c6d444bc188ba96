"""Queries about this server's names.

GET /_matrix/federation/v1/query/directory?room_alias=   (server-server-api/#get_matrixfederationv1querydirectory)
GET /_matrix/federation/v1/query/profile?user_id=&field= (server-server-api/#get_matrixfederationv1queryprofile)
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response
from starling.api.routing import Auth, Route, get
from starling.errors import MatrixError
from starling.federation.queries import FederationQueries


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{name}' query parameter")
    return value


class FederationQueriesApi:
    def __init__(self, queries: FederationQueries) -> None:
        self._queries = queries

    async def directory(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/query/directory?room_alias=
        (spec: server-server-api/#get_matrixfederationv1querydirectory)"""
        return json_response(await self._queries.directory(_required(request, "room_alias")))

    async def profile(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/query/profile?user_id=&field=
        (spec: server-server-api/#get_matrixfederationv1queryprofile)"""
        user_id = _required(request, "user_id")
        return json_response(await self._queries.profile(user_id, request.query.get("field")))

    def routes(self) -> list[Route]:
        """This area's rows of `routes.federation_table` (v1, X-Matrix)."""
        return [
            get("/query/directory", self.directory, Auth.FEDERATION),
            get("/query/profile", self.profile, Auth.FEDERATION),
        ]
