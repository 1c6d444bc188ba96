"""Admin API: rooms on Synapse's paths (Synapse: docs/admin_api/rooms.md and
room_membership.md). Handlers parse and check, `AdminRooms` holds the rules."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.admin.rooms import AdminRooms, DeleteRequest
from starling.api.admin.common import backwards, body_bool, optional_bool_query
from starling.api.client.common import query_int
from starling.api.client.room_reads import _room_event_filter as room_event_filter
from starling.api.client.timestamps import required_ts
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, delete, get, post, put, requester_of
from starling.errors import bad_json, invalid_param, missing_param
from starling.federation.timestamps import parse_direction
from starling.protocol.identifiers import is_valid_user_id
from starling.sync.tokens import parse_history_position

MAX_LIMIT = 1000
MAX_MESSAGES = 1000


def _user_id(body: dict[str, Any]) -> str:
    user_id = body.get("user_id")
    if user_id is None:
        raise missing_param("Missing 'user_id'")
    if not isinstance(user_id, str) or not is_valid_user_id(user_id):
        raise bad_json("'user_id' must be a user ID")
    return user_id


class AdminRoomRoutes:
    def __init__(self, rooms: AdminRooms) -> None:
        self._rooms = rooms

    async def list_rooms(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms
        (Synapse admin API: docs/admin_api/rooms.md#list-room-api)"""
        return json_response(
            await self._rooms.list_rooms(
                start=query_int(request, "from", 0),
                limit=query_int(request, "limit", 100, maximum=MAX_LIMIT),
                order_by=request.query.get("order_by", "name"),
                backwards=backwards(request),
                search_term=request.query.get("search_term") or None,
                public=optional_bool_query(request, "public_rooms"),
                empty=optional_bool_query(request, "empty_rooms"),
            )
        )

    async def details(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}
        (Synapse admin API: docs/admin_api/rooms.md#room-details-api)"""
        return json_response(await self._rooms.details(request.match_info["roomId"]))

    async def members(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/members
        (Synapse admin API: docs/admin_api/rooms.md#room-members-api)"""
        members = await self._rooms.members(request.match_info["roomId"])
        return json_response({"members": members, "total": len(members)})

    async def state(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/state
        (Synapse admin API: docs/admin_api/rooms.md#room-state-api)"""
        state = await self._rooms.state(request.match_info["roomId"], request.query.get("type"))
        return json_response({"state": state})

    async def messages(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/messages
        (Synapse admin API: docs/admin_api/rooms.md#room-messages-api)"""
        from_token = request.query.get("from") or None
        to_token = request.query.get("to") or None
        return json_response(
            await self._rooms.messages(
                request.match_info["roomId"],
                from_pos=parse_history_position(from_token) if from_token else None,
                from_token=from_token,
                to_pos=parse_history_position(to_token) if to_token else None,
                backwards=backwards(request),
                limit=query_int(request, "limit", 10, maximum=MAX_MESSAGES),
                efilter=room_event_filter(request),
            )
        )

    async def timestamp_to_event(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/timestamp_to_event
        (Synapse admin API: docs/admin_api/rooms.md#room-timestamp-to-event-api)"""
        ts = required_ts(request)
        forwards = parse_direction(request.query.get("dir", "f"))  # Synapse's default
        return json_response(
            await self._rooms.timestamp_to_event(request.match_info["roomId"], ts, forwards)
        )

    async def forward_extremities(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities
        (Synapse admin API: docs/admin_api/rooms.md#forward-extremities-admin-api)"""
        results = await self._rooms.forward_extremities(request.match_info["roomId"])
        return json_response({"count": len(results), "results": results})

    async def get_block(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/rooms/{roomId}/block
        (Synapse admin API: docs/admin_api/rooms.md#get-block-status)"""
        return json_response(await self._rooms.block_status(request.match_info["roomId"]))

    async def put_block(self, request: web.Request) -> web.Response:
        """PUT /_synapse/admin/v1/rooms/{roomId}/block
        (Synapse admin API: docs/admin_api/rooms.md#block-or-unblock-a-room)"""
        body = await read_json_object(request)
        block = body_bool(body, "block")
        if block is None:
            raise missing_param("Missing 'block'")
        await self._rooms.set_blocked(
            requester_of(request).user_id, request.match_info["roomId"], block
        )
        return json_response({"block": block})

    async def _delete_request(self, request: web.Request) -> DeleteRequest:
        body = await read_json_object(request)
        block = body_bool(body, "block")
        purge = body_bool(body, "purge")
        force = body_bool(body, "force_purge")
        new_user = body.get("new_room_user_id")
        if new_user is not None:
            if not isinstance(new_user, str) or not is_valid_user_id(new_user):
                raise bad_json("'new_room_user_id' must be a user ID")
            if not new_user.endswith(":" + self._rooms.server_name):
                raise invalid_param("User must be our own: " + new_user[:100])
        texts = {}
        for key, longest in (("room_name", 255), ("message", 10_000)):
            value = body.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > longest):
                raise bad_json(f"'{key}' must be a string of at most {longest} characters")
            texts[key] = value
        return DeleteRequest(
            block=bool(block),
            purge=True if purge is None else purge,
            force_purge=bool(force),
            new_room_user_id=new_user,
            room_name=texts["room_name"],
            message=texts["message"],
        )

    async def delete_v1(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/rooms/{roomId}
        (Synapse admin API: docs/admin_api/rooms.md#version-1-old-version)"""
        req = await self._delete_request(request)
        result = await self._rooms.delete_now(
            requester_of(request).user_id, request.match_info["roomId"], req
        )
        return json_response(result)

    async def delete_v2(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v2/rooms/{roomId}
        (Synapse admin API: docs/admin_api/rooms.md#version-2-new-version)"""
        req = await self._delete_request(request)
        delete_id = await self._rooms.start_delete(
            requester_of(request).user_id, request.match_info["roomId"], req
        )
        return json_response({"delete_id": delete_id})

    async def delete_status_by_room(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/rooms/{roomId}/delete_status
        (Synapse admin API: docs/admin_api/rooms.md#query-by-room_id)"""
        return json_response(
            {"results": await self._rooms.delete_statuses(request.match_info["roomId"])}
        )

    async def delete_status(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v2/rooms/delete_status/{deleteId}
        (Synapse admin API: docs/admin_api/rooms.md#query-by-delete_id)"""
        return json_response(await self._rooms.delete_status(request.match_info["deleteId"]))

    async def largest_rooms(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/statistics/database/rooms
        (Synapse admin API: docs/admin_api/statistics.md#get-largest-rooms-by-size-in-database)"""
        return json_response({"rooms": await self._rooms.largest_rooms()})

    async def background_updates(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/background_updates/status
        (Synapse admin API: docs/usage/administration/admin_api/background_updates.md)"""
        # Starling's migrations all run at start: nothing is ever updating in the background.
        return json_response({"enabled": True, "current_updates": {}})

    async def make_room_admin(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin
        (Synapse admin API: docs/admin_api/rooms.md#make-room-admin-api)"""
        body = await read_json_object(request)
        await self._rooms.make_room_admin(request.match_info["roomIdOrAlias"], _user_id(body))
        return json_response({})

    async def join(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/join/{roomIdOrAlias}
        (Synapse admin API: docs/admin_api/room_membership.md)"""
        body = await read_json_object(request)
        room_id = await self._rooms.join_user(
            requester_of(request).user_id, request.match_info["roomIdOrAlias"], _user_id(body)
        )
        return json_response({"room_id": room_id})

    def routes(self) -> list[Route]:
        v2 = ("v2",)
        return [
            get("/rooms", self.list_rooms, Auth.ADMIN),
            get("/rooms/{roomId}", self.details, Auth.ADMIN),
            get("/rooms/{roomId}/members", self.members, Auth.ADMIN),
            get("/rooms/{roomId}/state", self.state, Auth.ADMIN),
            get("/rooms/{roomId}/messages", self.messages, Auth.ADMIN),
            get("/rooms/{roomId}/forward_extremities", self.forward_extremities, Auth.ADMIN),
            get("/rooms/{roomId}/timestamp_to_event", self.timestamp_to_event, Auth.ADMIN),
            get("/rooms/{roomId}/block", self.get_block, Auth.ADMIN),
            put("/rooms/{roomId}/block", self.put_block, Auth.ADMIN),
            delete("/rooms/{roomId}", self.delete_v1, Auth.ADMIN),
            delete("/rooms/{roomId}", self.delete_v2, Auth.ADMIN, versions=v2),
            get(
                "/rooms/{roomId}/delete_status", self.delete_status_by_room, Auth.ADMIN, versions=v2
            ),
            get("/rooms/delete_status/{deleteId}", self.delete_status, Auth.ADMIN, versions=v2),
            post("/rooms/{roomIdOrAlias}/make_room_admin", self.make_room_admin, Auth.ADMIN),
            post("/join/{roomIdOrAlias}", self.join, Auth.ADMIN),
            get("/statistics/database/rooms", self.largest_rooms, Auth.ADMIN),
            get("/background_updates/status", self.background_updates, Auth.ADMIN),
        ]
