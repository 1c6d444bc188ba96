"""Client-Server API: relations and threads (spec: client-server-api "Relationships API",
#get_matrixclientv1roomsroomidrelationseventid, and the threading module's
#get_matrixclientv1roomsroomidthreads).

Handlers validate the parameters (400 M_INVALID_PARAM for anything malformed) and call
`RelationsService`, which applies room access and history visibility.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.errors import invalid_param
from starling.relations.service import RelationsService
from starling.sync.tokens import parse_room_position

# Synapse's defaults and caps for these endpoints.
DEFAULT_RELATIONS_LIMIT = 5
MAX_RELATIONS_LIMIT = 1000
DEFAULT_THREADS_LIMIT = 5
MAX_THREADS_LIMIT = 100
MAX_NAME_LENGTH = 255


def _path_name(request: web.Request, name: str) -> str | None:
    value = request.match_info.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_NAME_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


def _position(request: web.Request, name: str) -> tuple[int | None, str | None]:
    token = request.query.get(name) or None
    return (parse_room_position(token) if token is not None else None), token


class RelationRoutes:
    def __init__(self, relations: RelationsService) -> None:
        self.service = relations

    # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
    # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}
    # GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}
    # (spec: client-server-api/#get_matrixclientv1roomsroomidrelationseventid)
    async def relations(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        event_id = request.match_info["eventId"]
        rel_type = _path_name(request, "relType")
        event_type = _path_name(request, "eventType")
        direction = request.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise invalid_param("'dir' must be 'b' or 'f'")
        from_pos, from_token = _position(request, "from")
        to_pos, _ = _position(request, "to")
        limit = query_int(
            request, "limit", DEFAULT_RELATIONS_LIMIT, minimum=1, maximum=MAX_RELATIONS_LIMIT
        )
        body = await self.service.relations(
            requester.user_id,
            requester.device_id,
            room_id,
            event_id,
            rel_type=rel_type,
            event_type=event_type,
            from_pos=from_pos,
            from_token=from_token,
            to_pos=to_pos,
            backwards=direction == "b",
            limit=limit,
            recurse=query_bool(request, "recurse"),
        )
        return json_response(body)

    # GET /_matrix/client/v1/rooms/{roomId}/threads
    # (spec: client-server-api/#get_matrixclientv1roomsroomidthreads)
    async def threads(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        include = request.query.get("include", "all")
        if include not in ("all", "participated"):
            raise invalid_param("'include' must be 'all' or 'participated'")
        from_pos, _ = _position(request, "from")
        limit = query_int(
            request, "limit", DEFAULT_THREADS_LIMIT, minimum=1, maximum=MAX_THREADS_LIMIT
        )
        body = await self.service.threads(
            requester.user_id,
            requester.device_id,
            room_id,
            participated_only=include == "participated",
            from_pos=from_pos,
            limit=limit,
        )
        return json_response(body)
