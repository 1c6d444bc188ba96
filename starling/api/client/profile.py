"""Client-Server API: profiles.

Spec: client-server-api "Profiles" (#get_matrixclientv3profileuserid,
#get_matrixclientv3profileuseridkeyname, #put_matrixclientv3profileuseridkeyname,
#delete_matrixclientv3profileuseridkeyname). This server supports the displayname and
avatar_url fields.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import optional_user, require_user
from starling.api.http import json_response, read_json_object
from starling.api.services import Services
from starling.errors import missing_param

V3 = "/_matrix/client/v3"


class ProfileRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    # GET /profile/{userId}
    async def get_profile(self, request: web.Request) -> web.Response:
        await optional_user(request, self.svc.auth)
        profile = await self.svc.profile.get_profile(request.match_info["userId"])
        return json_response(profile)

    # GET /profile/{userId}/{keyName}
    async def get_field(self, request: web.Request) -> web.Response:
        await optional_user(request, self.svc.auth)
        value = await self.svc.profile.get_field(
            request.match_info["userId"], request.match_info["keyName"]
        )
        return json_response(value)

    # PUT /profile/{userId}/{keyName}
    async def put_field(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        field = request.match_info["keyName"]
        body = await read_json_object(request)
        if field not in body:
            raise missing_param(f"Missing '{field}'")
        await self.svc.profile.set_field(
            requester.user_id, request.match_info["userId"], field, body[field]
        )
        return json_response({})

    # DELETE /profile/{userId}/{keyName}
    async def delete_field(self, request: web.Request) -> web.Response:
        requester = await require_user(request, self.svc.auth)
        await self.svc.profile.set_field(
            requester.user_id, request.match_info["userId"], request.match_info["keyName"], None
        )
        return json_response({})


def register(app: web.Application, svc: Services) -> None:
    r = ProfileRoutes(svc)
    add = app.router.add_route
    add("GET", f"{V3}/profile/{{userId}}", r.get_profile)
    add("GET", f"{V3}/profile/{{userId}}/{{keyName}}", r.get_field)
    add("PUT", f"{V3}/profile/{{userId}}/{{keyName}}", r.put_field)
    add("DELETE", f"{V3}/profile/{{userId}}/{{keyName}}", r.delete_field)
