"""Our users' devices and keys, for other servers.

GET  /_matrix/federation/v1/user/devices/{userId}  (server-server-api/#get_matrixfederationv1userdevicesuserid)
POST /_matrix/federation/v1/user/keys/query        (server-server-api/#post_matrixfederationv1userkeysquery)
POST /_matrix/federation/v1/user/keys/claim        (server-server-api/#post_matrixfederationv1userkeysclaim)
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, get, post
from starling.e2ee.federation_keys import FederationKeyServer


class UserKeysApi:
    def __init__(self, keys: FederationKeyServer) -> None:
        self._keys = keys

    async def devices(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/user/devices/{userId}
        (spec: server-server-api/#get_matrixfederationv1userdevicesuserid)"""
        return json_response(await self._keys.devices(request.match_info["userId"]))

    async def query(self, request: web.Request) -> web.Response:
        """POST /_matrix/federation/v1/user/keys/query
        (spec: server-server-api/#post_matrixfederationv1userkeysquery)"""
        return json_response(await self._keys.query(await read_json_object(request)))

    async def claim(self, request: web.Request) -> web.Response:
        """POST /_matrix/federation/v1/user/keys/claim
        (spec: server-server-api/#post_matrixfederationv1userkeysclaim)"""
        return json_response(await self._keys.claim(await read_json_object(request)))

    def routes(self) -> list[Route]:
        """This area's rows of `routes.federation_table` (v1, X-Matrix)."""
        return [
            get("/user/devices/{userId}", self.devices, Auth.FEDERATION),
            post("/user/keys/query", self.query, Auth.FEDERATION),
            post("/user/keys/claim", self.claim, Auth.FEDERATION),
        ]
