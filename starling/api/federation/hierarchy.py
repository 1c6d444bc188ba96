"""GET /_matrix/federation/v1/hierarchy/{roomId}
(server-server-api/#get_matrixfederationv1hierarchyroomid): one level of a space, for
servers that may see it (`SpaceHierarchy.for_server`)."""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool
from starling.api.http import json_response
from starling.api.routing import Auth, Route, get, origin
from starling.rooms.hierarchy import SpaceHierarchy


class FederationHierarchyApi:
    def __init__(self, hierarchy: SpaceHierarchy) -> None:
        self._hierarchy = hierarchy

    async def hierarchy(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/hierarchy/{roomId}
        (spec: server-server-api/#get_matrixfederationv1hierarchyroomid)"""
        answer = await self._hierarchy.for_server(
            origin(request),
            request.match_info["roomId"],
            query_bool(request, "suggested_only", False),
        )
        return json_response(answer)

    def routes(self) -> list[Route]:
        return [get("/hierarchy/{roomId}", self.hierarchy, Auth.FEDERATION)]
