"""Client-Server API: GET /_matrix/client/v1/rooms/{roomId}/hierarchy (spec: "Spaces",
#get_matrixclientv1roomsroomidhierarchy). The walk is `starling.rooms.hierarchy`. Room
summaries (spec v1.15 /room_summary, MSC3266), which are the hierarchy's entry for one
room, are `starling.directory.summary`."""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import optional_requester, requester_of
from starling.directory.summary import RoomSummaries
from starling.errors import invalid_param
from starling.rooms.hierarchy import DEFAULT_LIMIT, MAX_LIMIT, SpaceHierarchy

MAX_TOKEN_LENGTH = 128


class HierarchyRoutes:
    def __init__(self, hierarchy: SpaceHierarchy, summaries: RoomSummaries) -> None:
        self.service = hierarchy
        self.summaries = summaries

    # GET /_matrix/client/v1/room_summary/{roomIdOrAlias}
    # (spec: client-server-api/#get_matrixclientv1room_summaryroomidoralias)
    async def room_summary(self, request: web.Request) -> web.Response:
        return await self._summary(request, unstable=False)

    # GET /_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias} and
    # GET /_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary
    # (spec: MSC3266's unstable paths; Synapse RoomSummaryRestServlet)
    async def unstable_summary(self, request: web.Request) -> web.Response:
        return await self._summary(request, unstable=True)

    async def _summary(self, request: web.Request, *, unstable: bool) -> web.Response:
        requester = optional_requester(request)
        body = await self.summaries.summary(
            requester.user_id if requester is not None else None,
            request.match_info["roomIdOrAlias"],
            request.query.getall("via", []),
            unstable,
        )
        return json_response(body)

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
