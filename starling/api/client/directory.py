"""Client-Server API: room aliases and the room directory.

Spec: client-server-api "Room aliases" (#put_matrixclientv3directoryroomroomalias,
GET/DELETE of the same, #get_matrixclientv3roomsroomidaliases) and "Listing rooms"
(#get_matrixclientv3directorylistroomroomid, PUT of the same,
#get_matrixclientv3publicrooms, #post_matrixclientv3publicrooms).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.client.common import body_str, optional_user, require_user
from starling.api.http import json_response, read_json_object
from starling.api.services import Services
from starling.directory.service import MAX_SEARCH_TERM_LENGTH
from starling.errors import bad_json, invalid_param
from starling.protocol.numbers import parse_int

V3 = "/_matrix/client/v3"


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["roomId"]
    if not room_id.startswith("!"):
        raise invalid_param(f"{room_id!r} is not a room ID")
    return room_id


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json("'limit' must be an integer")
    if value < 1:
        raise invalid_param("'limit' must be positive")
    return value


class DirectoryRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # PUT /directory/room/{roomAlias}
    async def put_alias(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        body = await read_json_object(request)
        room_id = body_str(body, "room_id", required=True)
        assert room_id is not None
        await self.svc.directory.create_alias(requester, request.match_info["roomAlias"], room_id)
        return json_response({})

    # GET /directory/room/{roomAlias}
    async def get_alias(self, request: web.Request) -> web.Response:
        return json_response(
            await self.svc.directory.resolve_alias(request.match_info["roomAlias"])
        )

    # DELETE /directory/room/{roomAlias}
    async def delete_alias(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        await self.svc.directory.delete_alias(requester, request.match_info["roomAlias"])
        return json_response({})

    # GET /rooms/{roomId}/aliases
    async def room_aliases(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        aliases = await self.svc.directory.room_aliases(requester, _room_id(request))
        return json_response({"aliases": aliases})

    # GET /directory/list/room/{roomId}
    async def get_visibility(self, request: web.Request) -> web.Response:
        visibility = await self.svc.directory.get_visibility(_room_id(request))
        return json_response({"visibility": visibility})

    # PUT /directory/list/room/{roomId}
    async def put_visibility(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        body = await read_json_object(request, allow_empty=True)
        visibility = body_str(body, "visibility") or "public"
        await self.svc.directory.set_visibility(requester, _room_id(request), visibility)
        return json_response({})

    # GET /publicRooms
    async def get_public_rooms(self, request: web.Request) -> web.Response:
        await optional_user(request, self.svc.auth)
        raw_limit = request.query.get("limit")
        limit = None
        if raw_limit is not None:
            parsed = parse_int(raw_limit)
            if parsed is None:
                raise invalid_param("'limit' must be an integer")
            limit = _limit(parsed)
        result = await self.svc.directory.public_rooms(
            limit=limit,
            since=request.query.get("since") or None,
            server=request.query.get("server") or None,
        )
        return json_response(result)

    # POST /publicRooms
    async def post_public_rooms(self, request: web.Request) -> web.Response:
        await require_user(request, self.svc.auth)
        body = await read_json_object(request, allow_empty=True)
        since = body_str(body, "since")
        search_filter = body.get("filter")
        if search_filter is None:
            search_filter = {}
        if not isinstance(search_filter, dict):
            raise bad_json("'filter' must be an object")
        term = body_str(search_filter, "generic_search_term")
        if term is not None and len(term) > MAX_SEARCH_TERM_LENGTH:
            raise invalid_param(f"The search term is longer than {MAX_SEARCH_TERM_LENGTH}")
        room_types = search_filter.get("room_types")
        if room_types is not None and (
            not isinstance(room_types, list)
            or not all(t is None or isinstance(t, str) for t in room_types)
        ):
            raise bad_json("'room_types' must be a list of strings or nulls")
        result = await self.svc.directory.public_rooms(
            limit=_limit(body.get("limit")),
            since=since or None,
            search=term.strip() if term else None,
            room_types=room_types,
            server=request.query.get("server") or None,
        )
        return json_response(result)


def register(app: web.Application, svc: Services) -> None:
    r = DirectoryRoutes(svc)
    add = app.router.add_route
    add("PUT", f"{V3}/directory/room/{{roomAlias}}", r.put_alias)
    add("GET", f"{V3}/directory/room/{{roomAlias}}", r.get_alias)
    add("DELETE", f"{V3}/directory/room/{{roomAlias}}", r.delete_alias)
    add("GET", f"{V3}/rooms/{{roomId}}/aliases", r.room_aliases)
    add("GET", f"{V3}/directory/list/room/{{roomId}}", r.get_visibility)
    add("PUT", f"{V3}/directory/list/room/{{roomId}}", r.put_visibility)
    add("GET", f"{V3}/publicRooms", r.get_public_rooms)
    add("POST", f"{V3}/publicRooms", r.post_public_rooms)
