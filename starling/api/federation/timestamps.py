"""GET /_matrix/federation/v1/timestamp_to_event/{roomId}
(server-server-api/#get_matrixfederationv1timestamp_to_eventroomid): our own answer, for
servers taking part in the room."""

from __future__ import annotations

from aiohttp import web

from starling.api.client.timestamps import required_ts
from starling.api.http import json_response
from starling.api.routing import Auth, Route, get, origin
from starling.federation.timestamps import TimestampLookup, parse_direction


class FederationTimestampApi:
    def __init__(self, lookup: TimestampLookup) -> None:
        self._lookup = lookup

    async def timestamp_to_event(self, request: web.Request) -> web.Response:
        """GET /_matrix/federation/v1/timestamp_to_event/{roomId}
        (spec: server-server-api/#get_matrixfederationv1timestamp_to_eventroomid)"""
        ts = required_ts(request)
        forwards = parse_direction(request.query.get("dir"))
        answer = await self._lookup.for_server(
            origin(request), request.match_info["roomId"], ts, forwards
        )
        return json_response(answer)

    def routes(self) -> list[Route]:
        return [get("/timestamp_to_event/{roomId}", self.timestamp_to_event, Auth.FEDERATION)]
