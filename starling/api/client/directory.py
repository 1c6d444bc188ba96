"""Client-Server API: room aliases and the room directory.

Spec: client-server-api "Room aliases" (#put_matrixclientv3directoryroomroomalias,
GET/DELETE of the same, #get_matrixclientv3roomsroomidaliases) and "Listing rooms"
(#get_matrixclientv3directorylistroomroomid, PUT of the same,
#get_matrixclientv3publicrooms, #post_matrixclientv3publicrooms).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.client.common import body_flag, body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.directory.service import (
    MAX_SEARCH_TERM_LENGTH,
    DirectoryService,
    PublicRoomsFilter,
)
from starling.errors import bad_json, invalid_param
from starling.protocol.numbers import parse_int


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_json("'limit' must be an integer")
    if value < 1:
        raise invalid_param("'limit' must be positive")
    return value


class DirectoryRoutes:
    def __init__(self, directory: DirectoryService) -> None:
        self.directory = directory

    # PUT /_matrix/client/v3/directory/room/{roomAlias}
    # (spec: client-server-api/#put_matrixclientv3directoryroomroomalias)
    async def put_alias(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        room_id = body_str(body, "room_id", required=True)
        assert room_id is not None
        await self.directory.create_alias(requester, request.match_info["roomAlias"], room_id)
        return json_response({})

    # GET /_matrix/client/v3/directory/room/{roomAlias}
    # (spec: client-server-api/#get_matrixclientv3directoryroomroomalias)
    async def get_alias(self, request: web.Request) -> web.Response:
        return json_response(await self.directory.resolve_alias(request.match_info["roomAlias"]))

    # DELETE /_matrix/client/v3/directory/room/{roomAlias}
    # (spec: client-server-api/#delete_matrixclientv3directoryroomroomalias)
    async def delete_alias(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.directory.delete_alias(requester, request.match_info["roomAlias"])
        return json_response({})

    # GET /_matrix/client/v3/rooms/{roomId}/aliases
    # (spec: client-server-api/#get_matrixclientv3roomsroomidaliases)
    async def room_aliases(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        aliases = await self.directory.room_aliases(requester, request.match_info["roomId"])
        return json_response({"aliases": aliases})

    # GET /_matrix/client/v3/directory/list/room/{roomId}
    # (spec: client-server-api/#get_matrixclientv3directorylistroomroomid)
    async def get_visibility(self, request: web.Request) -> web.Response:
        visibility = await self.directory.get_visibility(request.match_info["roomId"])
        return json_response({"visibility": visibility})

    # PUT /_matrix/client/v3/directory/list/room/{roomId}
    # (spec: client-server-api/#put_matrixclientv3directorylistroomroomid)
    async def put_visibility(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        visibility = body_str(body, "visibility") or "public"
        await self.directory.set_visibility(requester, request.match_info["roomId"], visibility)
        return json_response({})

    # PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}
    # (spec: client-server-api/#put_matrixclientv3directorylistappservicenetworkidroomid)
    # DELETE /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}
    # (Synapse; not in the spec): the room leaves the network's list
    async def put_network_visibility(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        if request.method == "DELETE":
            visibility = "private"
        else:
            body = await read_json_object(request)
            visibility = body_str(body, "visibility", required=True) or ""
        await self.directory.set_network_visibility(
            requester, request.match_info["networkId"], request.match_info["roomId"], visibility
        )
        return json_response({})

    # GET /_matrix/client/v3/publicRooms
    # (spec: client-server-api/#get_matrixclientv3publicrooms)
    async def get_public_rooms(self, request: web.Request) -> web.Response:
        raw_limit = request.query.get("limit")
        limit = None
        if raw_limit is not None:
            parsed = parse_int(raw_limit)
            if parsed is None:
                raise invalid_param("'limit' must be an integer")
            limit = _limit(parsed)
        result = await self.directory.public_rooms(
            limit=limit,
            since=request.query.get("since") or None,
            server=request.query.get("server") or None,
            network=request.query.get("third_party_instance_id") or None,
            all_networks=request.query.get("include_all_networks") == "true",
        )
        return json_response(result)

    # POST /_matrix/client/v3/publicRooms
    # (spec: client-server-api/#post_matrixclientv3publicrooms)
    async def post_public_rooms(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        since = body_str(body, "since")
        search_filter = PublicRoomsFilter.from_body(body.get("filter"), MAX_SEARCH_TERM_LENGTH)
        result = await self.directory.public_rooms(
            limit=_limit(body.get("limit")),
            since=since or None,
            search=search_filter.search,
            room_types=search_filter.room_types,
            server=request.query.get("server") or None,
            network=body_str(body, "third_party_instance_id") or None,
            all_networks=body_flag(body, "include_all_networks"),
        )
        return json_response(result)
