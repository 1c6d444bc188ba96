"""Client-Server API: profiles.

Spec: client-server-api "Profiles" (#get_matrixclientv3profileuserid,
#get_matrixclientv3profileuseridkeyname, #put_matrixclientv3profileuseridkeyname,
#delete_matrixclientv3profileuseridkeyname). This server supports the displayname and
avatar_url fields.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import missing_param
from starling.profile.service import ProfileService


class ProfileRoutes:
    def __init__(self, profile: ProfileService) -> None:
        self.profile = profile

    # GET /_matrix/client/v3/profile/{userId}
    # (spec: client-server-api/#get_matrixclientv3profileuserid)
    async def get_profile(self, request: web.Request) -> web.Response:
        profile = await self.profile.get_profile(request.match_info["userId"])
        return json_response(profile)

    # GET /_matrix/client/v3/profile/{userId}/{keyName}
    # (spec: client-server-api/#get_matrixclientv3profileuseridkeyname)
    async def get_field(self, request: web.Request) -> web.Response:
        value = await self.profile.get_field(
            request.match_info["userId"], request.match_info["keyName"]
        )
        return json_response(value)

    # PUT /_matrix/client/v3/profile/{userId}/{keyName}
    # (spec: client-server-api/#put_matrixclientv3profileuseridkeyname)
    async def put_field(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        field = request.match_info["keyName"]
        body = await read_json_object(request)
        if field not in body:
            raise missing_param(f"Missing '{field}'")
        await self.profile.set_field(
            requester.user_id, request.match_info["userId"], field, body[field]
        )
        return json_response({})

    # DELETE /_matrix/client/v3/profile/{userId}/{keyName}
    # (spec: client-server-api/#delete_matrixclientv3profileuseridkeyname)
    async def delete_field(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.profile.set_field(
            requester.user_id, request.match_info["userId"], request.match_info["keyName"], None
        )
        return json_response({})
