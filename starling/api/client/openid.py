"""Client-Server API: OpenID tokens (spec: client-server-api, "OpenID")."""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.openid.tokens import OpenIdTokens


class OpenIdRoutes:
    def __init__(self, tokens: OpenIdTokens) -> None:
        self._tokens = tokens

    # POST /_matrix/client/v3/user/{userId}/openid/request_token
    # (spec: client-server-api/#post_matrixclientv3useruseridopenidrequest_token)
    async def request_token(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await read_json_object(request, allow_empty=True)  # reserved: an empty object
        answer = await self._tokens.request_token(requester.user_id, request.match_info["userId"])
        return json_response(answer)
