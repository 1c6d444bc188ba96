"""Client-Server API: jump to a date (spec: client-server-api,
#get_matrixclientv1roomsroomidtimestamp_to_event)."""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_int
from starling.api.http import json_response
from starling.api.routing import requester_of
from starling.errors import missing_param
from starling.federation.timestamps import TimestampLookup, parse_direction


def required_ts(request: web.Request) -> int:
    if "ts" not in request.query:
        raise missing_param("Missing 'ts'")
    return query_int(request, "ts", 0, maximum=2**62)


class TimestampRoutes:
    def __init__(self, lookup: TimestampLookup) -> None:
        self._lookup = lookup

    # GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event
    # (spec: client-server-api/#get_matrixclientv1roomsroomidtimestamp_to_event)
    async def timestamp_to_event(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        ts = required_ts(request)
        forwards = parse_direction(request.query.get("dir"))
        answer = await self._lookup.for_user(
            requester.user_id, request.match_info["roomId"], ts, forwards
        )
        return json_response(answer)
