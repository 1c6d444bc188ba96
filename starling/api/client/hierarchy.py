"""Client-Server API: GET /_matrix/client/v1/rooms/{roomId}/hierarchy (spec: "Spaces",
#get_matrixclientv1roomsroomidhierarchy). The walk is `starling.rooms.hierarchy`."""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.errors import invalid_param
from starling.rooms.hierarchy import DEFAULT_LIMIT, MAX_LIMIT, SpaceHierarchy

MAX_TOKEN_LENGTH = 128


class HierarchyRoutes:
    def __init__(self, hierarchy: SpaceHierarchy) -> None:
        self.service = hierarchy

    # GET /_matrix/client/v1/rooms/{roomId}/hierarchy
    # (spec: client-server-api/#get_matrixclientv1roomsroomidhierarchy)
    async def hierarchy(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
        max_depth = (
            query_int(request, "max_depth", 0, minimum=0) if "max_depth" in request.query else None
        )
        suggested_only = query_bool(request, "suggested_only")
        from_token = request.query.get("from")
        if from_token is not None and (not from_token or len(from_token) > MAX_TOKEN_LENGTH):
            raise invalid_param("Unknown pagination token")
        body = await self.service.hierarchy(
            requester.user_id,
            room_id,
            suggested_only=suggested_only,
            max_depth=max_depth,
            limit=limit,
            from_token=from_token,
        )
        return json_response(body)
