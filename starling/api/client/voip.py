"""VoIP: GET /voip/turnServer (spec: client-server-api modules/voip_events.md). The
credentials, and who gets them, come from `starling.voip.TurnServers`.

Third-party networks (modules/third_party_networks.md) come from application services:
see `api/client/appservice.py`.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.voip import TurnServers


class VoipRoutes:
    def __init__(self, turn: TurnServers) -> None:
        self.turn = turn

    # GET /_matrix/client/v3/voip/turnServer
    # (spec: client-server-api/#get_matrixclientv3voipturnserver)
    async def turn_server(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response(self.turn.credentials(requester.user_id, guest=requester.is_guest))
