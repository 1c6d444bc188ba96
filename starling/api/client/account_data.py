"""Client-Server API: account data and room tags.

Spec: client-server-api modules/account_data.md (#put_matrixclientv3useruseridaccount_datatype,
#get_matrixclientv3useruseridaccount_datatype and the per-room variants) and
modules/tags.md (#get_matrixclientv3useruseridroomsroomidtags, PUT/DELETE .../tags/{tag}).
Users may only read and write their own account data.
"""

from __future__ import annotations

from aiohttp import web

from starling.accounts.auth import Requester
from starling.api.client.common import require_user
from starling.api.http import json_response, read_json_object
from starling.api.services import Services
from starling.errors import forbidden, invalid_param, not_found
from starling.protocol.identifiers import is_valid_room_id

V3 = "/_matrix/client/v3"


def _own_user(request: web.Request, requester: Requester, verb: str) -> str:
    user_id = request.match_info["userId"]
    if user_id != requester.user_id:
        raise forbidden(f"Cannot {verb} account data for other users")
    return user_id


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["roomId"]
    if not is_valid_room_id(room_id):
        raise invalid_param(f"{room_id!r} is not a room ID")
    return room_id


class AccountDataRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # PUT /user/{userId}/account_data/{type}
    async def put_global(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "add")
        content = await read_json_object(request)
        await self.svc.account_data.put_from_client(
            user_id, None, request.match_info["type"], content
        )
        return json_response({})

    # GET /user/{userId}/account_data/{type}
    async def get_global(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "get")
        content = await self.svc.account_data.get(user_id, None, request.match_info["type"])
        if content is None:
            raise not_found("Account data not found")
        return json_response(content)

    # PUT /user/{userId}/rooms/{roomId}/account_data/{type}
    async def put_room(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "add")
        room_id = _room_id(request)
        content = await read_json_object(request)
        await self.svc.account_data.put_from_client(
            user_id, room_id, request.match_info["type"], content
        )
        return json_response({})

    # GET /user/{userId}/rooms/{roomId}/account_data/{type}
    async def get_room(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "get")
        room_id = _room_id(request)
        content = await self.svc.account_data.get(user_id, room_id, request.match_info["type"])
        if content is None:
            raise not_found("Room account data not found")
        return json_response(content)

    # GET /user/{userId}/rooms/{roomId}/tags
    async def get_tags(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "get")
        tags = await self.svc.account_data.get_tags(user_id, _room_id(request))
        return json_response({"tags": tags})

    # PUT /user/{userId}/rooms/{roomId}/tags/{tag}
    async def put_tag(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "add")
        room_id = _room_id(request)
        body = await read_json_object(request, allow_empty=True)
        await self.svc.account_data.add_tag(user_id, room_id, request.match_info["tag"], body)
        return json_response({})

    # DELETE /user/{userId}/rooms/{roomId}/tags/{tag}
    async def delete_tag(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = _own_user(request, requester, "remove")
        await self.svc.account_data.remove_tag(
            user_id, _room_id(request), request.match_info["tag"]
        )
        return json_response({})


def register(app: web.Application, svc: Services) -> None:
    r = AccountDataRoutes(svc)
    add = app.router.add_route
    add("PUT", f"{V3}/user/{{userId}}/account_data/{{type}}", r.put_global)
    add("GET", f"{V3}/user/{{userId}}/account_data/{{type}}", r.get_global)
    add("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}", r.put_room)
    add("GET", f"{V3}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}", r.get_room)
    add("GET", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags", r.get_tags)
    add("PUT", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}", r.put_tag)
    add("DELETE", f"{V3}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}", r.delete_tag)
