"""Client-Server API: account data and room tags.

Spec: client-server-api modules/account_data.md (#put_matrixclientv3useruseridaccount_datatype,
#get_matrixclientv3useruseridaccount_datatype and the per-room variants) and
modules/tags.md (#get_matrixclientv3useruseridroomsroomidtags, PUT/DELETE .../tags/{tag}).
Users may only read and write their own account data.
"""

from __future__ import annotations

from aiohttp import web

from starling.account_data.service import AccountDataService
from starling.accounts.auth import Requester
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import forbidden, not_found


def _own_user(request: web.Request, requester: Requester, verb: str) -> str:
    user_id = request.match_info["userId"]
    if user_id != requester.user_id:
        raise forbidden(f"Cannot {verb} account data for other users")
    return user_id


class AccountDataRoutes:
    def __init__(self, account_data: AccountDataService) -> None:
        self.account_data = account_data

    # PUT /_matrix/client/v3/user/{userId}/account_data/{type}
    # (spec: client-server-api/#put_matrixclientv3useruseridaccount_datatype)
    async def put_global(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "add")
        content = await read_json_object(request)
        await self.account_data.put_from_client(user_id, None, request.match_info["type"], content)
        return json_response({})

    # GET /_matrix/client/v3/user/{userId}/account_data/{type}
    # (spec: client-server-api/#get_matrixclientv3useruseridaccount_datatype)
    async def get_global(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "get")
        content = await self.account_data.get(user_id, None, request.match_info["type"])
        if content is None:
            raise not_found("Account data not found")
        return json_response(content)

    # PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
    # (spec: client-server-api/#put_matrixclientv3useruseridroomsroomidaccount_datatype)
    async def put_room(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "add")
        room_id = request.match_info["roomId"]
        content = await read_json_object(request)
        await self.account_data.put_from_client(
            user_id, room_id, request.match_info["type"], content
        )
        return json_response({})

    # GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
    # (spec: client-server-api/#get_matrixclientv3useruseridroomsroomidaccount_datatype)
    async def get_room(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "get")
        room_id = request.match_info["roomId"]
        content = await self.account_data.get(user_id, room_id, request.match_info["type"])
        if content is None:
            raise not_found("Room account data not found")
        return json_response(content)

    # GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags
    # (spec: client-server-api/#get_matrixclientv3useruseridroomsroomidtags)
    async def get_tags(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "get")
        tags = await self.account_data.get_tags(user_id, request.match_info["roomId"])
        return json_response({"tags": tags})

    # PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
    # (spec: client-server-api/#put_matrixclientv3useruseridroomsroomidtagstag)
    async def put_tag(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "add")
        room_id = request.match_info["roomId"]
        body = await read_json_object(request, allow_empty=True)
        await self.account_data.add_tag(user_id, room_id, request.match_info["tag"], body)
        return json_response({})

    # DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
    # (spec: client-server-api/#delete_matrixclientv3useruseridroomsroomidtagstag)
    async def delete_tag(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = _own_user(request, requester, "remove")
        await self.account_data.remove_tag(
            user_id, request.match_info["roomId"], request.match_info["tag"]
        )
        return json_response({})
