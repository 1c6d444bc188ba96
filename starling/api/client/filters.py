"""Client-Server API: filters (spec: client-server-api "Filtering").

POST /user/{userId}/filter stores a validated filter and returns its ID; GET returns it.
Only the user themself may do either (403 otherwise). A filter may be at most
MAX_FILTER_BYTES of JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response, parse_json_object
from starling.api.routing import requester_of
from starling.errors import MatrixError, forbidden, not_found, too_large
from starling.protocol.numbers import parse_int
from starling.sync.filtering import MAX_FILTER_BYTES
from starling.sync.filters import SyncFilters


def _own_user(request: web.Request, user_id: str, server_name: str) -> None:
    target = request.match_info["userId"]
    if target != user_id:
        raise forbidden("Cannot use filters of other users")
    if not target.endswith(":" + server_name):
        raise MatrixError(400, "M_UNKNOWN", "Can only use filters of local users")


async def _read_filter_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    if len(raw) > MAX_FILTER_BYTES:
        raise too_large(f"Filter larger than {MAX_FILTER_BYTES} bytes")
    return parse_json_object(raw)


class FilterRoutes:
    def __init__(self, server_name: str, filters: SyncFilters) -> None:
        self.server_name = server_name
        self.filters = filters

    # POST /_matrix/client/v3/user/{userId}/filter
    # (spec: client-server-api/#post_matrixclientv3useruseridfilter)
    async def create(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        _own_user(request, requester.user_id, self.server_name)
        body = await _read_filter_body(request)
        filter_id = await self.filters.create(requester.user_id, body)
        return json_response({"filter_id": str(filter_id)})

    # GET /_matrix/client/v3/user/{userId}/filter/{filterId}
    # (spec: client-server-api/#get_matrixclientv3useruseridfilterfilterid)
    async def get(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        _own_user(request, requester.user_id, self.server_name)
        raw_id = request.match_info["filterId"]
        filter_id = parse_int(raw_id, minimum=0)
        if filter_id is None:
            raise not_found("No such filter")
        found = await self.filters.get(requester.user_id, filter_id)
        if found is None:
            raise not_found("No such filter")
        return json_response(found)
