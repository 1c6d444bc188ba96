"""Client-Server API: presence.

Spec: client-server-api modules/presence.md (#put_matrixclientv3presenceuseridstatus,
#get_matrixclientv3presenceuseridstatus).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import body_str
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import forbidden
from starling.presence.service import PresenceService


class PresenceRoutes:
    def __init__(self, presence: PresenceService) -> None:
        self.presence = presence

    # PUT /_matrix/client/v3/presence/{userId}/status
    # (spec: client-server-api/#put_matrixclientv3presenceuseridstatus)
    async def put_status(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = request.match_info["userId"]
        if user_id != requester.user_id:
            raise forbidden("You can only set your own presence")
        body = await read_json_object(request)
        presence = body_str(body, "presence", required=True)
        assert presence is not None
        status_msg = body_str(body, "status_msg")
        await self.presence.set_state(
            user_id, presence, status_msg, keep_msg="status_msg" not in body
        )
        return json_response({})

    # GET /_matrix/client/v3/presence/{userId}/status
    # (spec: client-server-api/#get_matrixclientv3presenceuseridstatus)
    async def get_status(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        user_id = request.match_info["userId"]
        return json_response(await self.presence.get_presence(requester.user_id, user_id))
