"""The webhooks route table: ``/_starling/webhooks/v1`` (Starling's own API; see
`starling.webhooks`). Mounted on listeners serving the client API."""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, RouteTable, post
from starling.webhooks.incoming import IncomingWebhooks

PREFIX = "/_starling/webhooks/{version}"


class WebhookRoutes:
    def __init__(self, incoming: IncomingWebhooks) -> None:
        self.incoming = incoming

    # POST /_starling/webhooks/v1/incoming/{hookId}/{secret}
    # (spec: none, Starling's own: docs/configuration.md "Webhooks")
    async def post_incoming(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        event_id = await self.incoming.post(
            request.match_info["hookId"], request.match_info["secret"], body
        )
        return json_response({"event_id": event_id})


def webhooks_table(incoming: IncomingWebhooks) -> RouteTable:
    routes = WebhookRoutes(incoming)
    return RouteTable(
        "webhooks",
        PREFIX,
        ("v1",),
        [post("/incoming/{hookId}/{secret}", routes.post_incoming, Auth.NONE)],
    )
