"""Client-Server API: reading rooms (spec: client-server-api "Room participation",
"Pagination", "Retrieving events around an event").

GET /rooms/{roomId}/event/{eventId}, /state, /state/{eventType}/{stateKey}, /members,
/joined_members, /messages and /context/{eventId}. Handlers validate parameters and
call `RoomHistory`, which applies access and history visibility.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_int
from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.errors import invalid_param, missing_param
from starling.sync.filtering import NO_FILTER, EventFilter, parse_event_filter, parse_filter_json
from starling.sync.history import DEFAULT_LIMIT, MAX_MESSAGES_LIMIT, RoomHistory
from starling.sync.tokens import parse_history_position, parse_room_position


def _room_event_filter(request: web.Request) -> EventFilter:
    raw = request.query.get("filter")
    if not raw:
        return NO_FILTER
    value = parse_filter_json(raw)
    if not isinstance(value, dict):
        raise invalid_param("'filter' must be a JSON object")
    return parse_event_filter(value)


class RoomReadRoutes:
    def __init__(self, room_history: RoomHistory) -> None:
        self.room_history = room_history

    # GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}
    # (spec: client-server-api/#get_matrixclientv3roomsroomideventeventid)
    async def event(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await self.room_history.get_event(
            requester.user_id,
            requester.device_id,
            request.match_info["roomId"],
            request.match_info["eventId"],
        )
        return json_response(body)

    # GET /_matrix/client/v3/rooms/{roomId}/state
    # (spec: client-server-api/#get_matrixclientv3roomsroomidstate)
    async def state(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        events = await self.room_history.state_events(
            requester.user_id, request.match_info["roomId"]
        )
        return json_response(events)

    # GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}
    # GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}
    # (spec: client-server-api/#get_matrixclientv3roomsroomidstateeventtypestatekey)
    async def state_event(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        fmt = request.query.get("format", "content")
        if fmt not in ("content", "event"):
            raise invalid_param("'format' must be 'content' or 'event'")
        _, formatted = await self.room_history.state_event(
            requester.user_id,
            request.match_info["roomId"],
            request.match_info["eventType"],
            request.match_info.get("stateKey", ""),
        )
        return json_response(formatted if fmt == "event" else formatted["content"])

    # GET /_matrix/client/v3/rooms/{roomId}/members
    # (spec: client-server-api/#get_matrixclientv3roomsroomidmembers)
    async def members(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        at_raw = request.query.get("at")
        chunk = await self.room_history.members(
            requester.user_id,
            request.match_info["roomId"],
            parse_room_position(at_raw) if at_raw else None,
            request.query.get("membership"),
            request.query.get("not_membership"),
        )
        return json_response({"chunk": chunk})

    # GET /_matrix/client/v3/rooms/{roomId}/joined_members
    # (spec: client-server-api/#get_matrixclientv3roomsroomidjoined_members)
    async def joined_members(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        joined = await self.room_history.joined_members(
            requester.user_id, request.match_info["roomId"]
        )
        return json_response({"joined": joined})

    # GET /_matrix/client/v3/rooms/{roomId}/messages
    # (spec: client-server-api/#get_matrixclientv3roomsroomidmessages)
    async def messages(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        direction = request.query.get("dir")
        if direction is None:
            raise missing_param("'dir' is required")
        if direction not in ("b", "f"):
            raise invalid_param("'dir' must be 'b' or 'f'")
        from_token = request.query.get("from") or None
        to_token = request.query.get("to") or None
        limit = query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_MESSAGES_LIMIT)
        body = await self.room_history.messages(
            requester.user_id,
            requester.device_id,
            room_id,
            from_pos=parse_history_position(from_token) if from_token else None,
            from_token=from_token,
            to_pos=parse_history_position(to_token) if to_token else None,
            backwards=direction == "b",
            limit=limit,
            efilter=_room_event_filter(request),
        )
        return json_response(body)

    # GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}
    # (spec: client-server-api/#get_matrixclientv3roomsroomidcontexteventid)
    async def context(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await self.room_history.context(
            requester.user_id,
            requester.device_id,
            request.match_info["roomId"],
            request.match_info["eventId"],
            query_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_MESSAGES_LIMIT),
            _room_event_filter(request),
        )
        return json_response(body)
