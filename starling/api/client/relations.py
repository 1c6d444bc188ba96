"""Client-Server API: relations and threads (spec: client-server-api "Relationships API",
#get_matrixclientv1roomsroomidrelationseventid, and the threading module's
#get_matrixclientv1roomsroomidthreads).

Handlers validate the parameters (400 M_INVALID_PARAM for anything malformed) and call
`RelationsService`, which applies room access and history visibility.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int, require_user
from starling.api.http import json_response
from starling.api.services import Services
from starling.errors import invalid_param
from starling.sync.tokens import parse_room_position

V1 = "/_matrix/client/v1"
# Synapse's defaults and caps for these endpoints.
DEFAULT_RELATIONS_LIMIT = 5
MAX_RELATIONS_LIMIT = 1000
DEFAULT_THREADS_LIMIT = 5
MAX_THREADS_LIMIT = 100
MAX_NAME_LENGTH = 255


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["roomId"]
    if not room_id.startswith("!") or len(room_id) > MAX_NAME_LENGTH:
        raise invalid_param(f"{room_id[:80]!r} is not a room ID")
    return room_id


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["eventId"]
    if not event_id.startswith("$") or len(event_id) > MAX_NAME_LENGTH:
        raise invalid_param(f"{event_id[:80]!r} is not an event ID")
    return event_id


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
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]
    async def relations(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        room_id = _room_id(request)
        event_id = _event_id(request)
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
        body = await self.svc.relations.relations(
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

    # GET /rooms/{roomId}/threads
    async def threads(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        room_id = _room_id(request)
        include = request.query.get("include", "all")
        if include not in ("all", "participated"):
            raise invalid_param("'include' must be 'all' or 'participated'")
        from_pos, _ = _position(request, "from")
        limit = query_int(
            request, "limit", DEFAULT_THREADS_LIMIT, minimum=1, maximum=MAX_THREADS_LIMIT
        )
        body = await self.svc.relations.threads(
            requester.user_id,
            requester.device_id,
            room_id,
            participated_only=include == "participated",
            from_pos=from_pos,
            limit=limit,
        )
        return json_response(body)


def register(app: web.Application, svc: Services) -> None:
    r = RelationRoutes(svc)
    add = app.router.add_route
    base = f"{V1}/rooms/{{roomId}}/relations/{{eventId}}"
    add("GET", base, r.relations)
    add("GET", f"{base}/{{relType}}", r.relations)
    add("GET", f"{base}/{{relType}}/{{eventType}}", r.relations)
    add("GET", f"{V1}/rooms/{{roomId}}/threads", r.threads)
