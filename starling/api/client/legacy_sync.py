"""Client-Server API: the deprecated r0 sync reads — GET /events, GET /initialSync and
GET /rooms/{roomId}/initialSync (spec: old_sync.yaml, room_initial_sync.yaml; peeking).

Parameters are validated here (a bad `from`, `timeout`, `limit`, `room_id` or boolean is
a 400); the work is `LegacySync`.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.errors import invalid_param
from starling.protocol.identifiers import is_valid_room_id
from starling.sync.legacy import MAX_EVENTS_LIMIT, LegacySync
from starling.sync.service import MAX_TIMEOUT_MS
from starling.sync.tokens import SyncToken


class LegacySyncRoutes:
    def __init__(self, legacy: LegacySync) -> None:
        self.legacy = legacy

    # GET /_matrix/client/v3/events
    # (spec: client-server-api/#get_matrixclientv3events)
    async def events(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        raw_from = request.query.get("from")
        from_token = SyncToken.parse(raw_from) if raw_from else None
        timeout = query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS)
        limit = (
            query_int(request, "limit", 0, maximum=MAX_EVENTS_LIMIT)
            if "limit" in request.query
            else None
        )
        room_id = request.query.get("room_id")
        if room_id is not None and not is_valid_room_id(room_id):
            raise invalid_param("'room_id' is not a room ID")
        body = await self.legacy.events(
            requester.user_id,
            requester.device_id,
            is_guest=requester.is_guest,
            from_token=from_token,
            timeout_ms=timeout,
            limit=limit,
            room_id=room_id,
        )
        return json_response(body)

    # GET /_matrix/client/v3/initialSync
    # (spec: client-server-api/#get_matrixclientv3initialsync)
    async def initial_sync(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        limit = query_int(request, "limit", 10, maximum=100) if "limit" in request.query else None
        body = await self.legacy.initial_sync(
            requester.user_id,
            requester.device_id,
            limit=limit,
            archived=query_bool(request, "archived"),
        )
        return json_response(body)

    # GET /_matrix/client/v3/rooms/{roomId}/initialSync
    # (spec: client-server-api/#get_matrixclientv3roomsroomidinitialsync)
    async def room_initial_sync(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        limit = query_int(request, "limit", 10, maximum=100) if "limit" in request.query else None
        body = await self.legacy.room_initial_sync(
            requester.user_id,
            requester.device_id,
            request.match_info["roomId"],
            limit=limit,
        )
        return json_response(body)
