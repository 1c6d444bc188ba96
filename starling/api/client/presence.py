"""Client-Server API: presence.

Spec: client-server-api modules/presence.md (#put_matrixclientv3presenceuseridstatus,
#get_matrixclientv3presenceuseridstatus).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import body_str, require_user
from starling.api.http import json_response, read_json_object
from starling.api.services import Services
from starling.errors import forbidden, invalid_param
from starling.protocol.identifiers import is_valid_user_id

V3 = "/_matrix/client/v3"


class PresenceRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # PUT /presence/{userId}/status
    async def put_status(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = request.match_info["userId"]
        if user_id != requester.user_id:
            raise forbidden("You can only set your own presence")
        body = await read_json_object(request)
        presence = body_str(body, "presence", required=True)
        assert presence is not None
        status_msg = body_str(body, "status_msg")
        await self.svc.presence.set_state(
            user_id, presence, status_msg, keep_msg="status_msg" not in body
        )
        return json_response({})

    # GET /presence/{userId}/status
    async def get_status(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        user_id = request.match_info["userId"]
        if not is_valid_user_id(user_id):
            raise invalid_param(f"{user_id!r} is not a user ID")
        return json_response(await self.svc.presence.get_presence(requester.user_id, user_id))


def register(app: web.Application, svc: Services) -> None:
    r = PresenceRoutes(svc)
    app.router.add_route("PUT", f"{V3}/presence/{{userId}}/status", r.put_status)
    app.router.add_route("GET", f"{V3}/presence/{{userId}}/status", r.get_status)
