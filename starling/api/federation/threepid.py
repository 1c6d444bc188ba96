"""The identity server's call when an invited address gets bound (server-server-api
"Third-party invites"): PUT (spec) or POST (identity servers) /_matrix/federation/v1/3pid/onbind.

Called by identity servers, not homeservers: no X-Matrix signature. What it may cause is
bounded by the checks in starling.rooms.third_party_invites (the room's invite keys must
have signed each invite, and the identity server must still vouch for the key).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, post, put
from starling.identity.service import ThreepidService


class FederationThreepidApi:
    def __init__(self, threepids: ThreepidService) -> None:
        self._threepids = threepids

    async def onbind(self, request: web.Request) -> web.Response:
        """PUT /_matrix/federation/v1/3pid/onbind
        POST /_matrix/federation/v1/3pid/onbind (what identity servers send, and Synapse
        serves) (spec: server-server-api/#put_matrixfederationv13pidonbind)"""
        await self._threepids.on_bind(await read_json_object(request))
        return json_response({})

    def routes(self) -> list[Route]:
        return [
            put("/3pid/onbind", self.onbind, Auth.NONE),
            post("/3pid/onbind", self.onbind, Auth.NONE),
        ]
