"""Client-Server API: managing delayed events (MSC4140) at Synapse's unstable prefix
/_matrix/client/unstable/org.matrix.msc4140. Scheduling is the send and state PUTs with
`org.matrix.msc4140.delay` (starling.api.client.rooms). The work is
`starling.rooms.delayed`."""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.rooms.delayed import DelayedEvents

PREFIX = "unstable/org.matrix.msc4140"


class DelayedEventRoutes:
    def __init__(self, service: DelayedEvents) -> None:
        self.service = service

    # POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}/{action}
    # (spec: MSC4140 "Managing scheduled delayed events"; the delay ID is the credential)
    async def act(self, request: web.Request) -> web.Response:
        return json_response(
            await self.service.act(request.match_info["delayId"], request.match_info["action"])
        )

    # POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delayId}
    # (spec: MSC4140's earlier text, the action in the body; Synapse UpdateDelayedEventServlet)
    async def act_in_body(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        return json_response(
            await self.service.act(request.match_info["delayId"], body.get("action"))
        )

    # GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events
    # (spec: MSC4140 "Getting delayed events"; Synapse DelayedEventsServlet)
    async def list(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response(
            await self.service.list(requester.user_id, request.query.get("status"))
        )
