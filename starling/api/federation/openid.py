"""OpenID userinfo for third parties (spec: server-server-api, "OpenID").

GET /_matrix/federation/v1/openid/userinfo?access_token=  (server-server-api/#get_matrixfederationv1openiduserinfo)

Called by integration managers and widgets, not by homeservers: no X-Matrix signature.
The token comes in the query (the spec) or, as Synapse accepts, as a Bearer header.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response
from starling.api.routing import Auth, Route, get
from starling.openid.tokens import OpenIdTokens


class FederationOpenIdApi:
    def __init__(self, tokens: OpenIdTokens) -> None:
        self._tokens = tokens

    async def userinfo(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/openid/userinfo
        (spec: server-server-api/#get_matrixfederationv1openiduserinfo)"""
        token = request.query.get("access_token")
        if token is None:
            header = request.headers.get("Authorization", "")
            if header[:7].lower() == "bearer ":
                token = header[7:].strip()
        return json_response(await self._tokens.userinfo(token))

    def routes(self) -> list[Route]:
        return [get("/openid/userinfo", self.userinfo, Auth.NONE)]
