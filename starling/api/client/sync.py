"""Client-Server API: GET /sync (spec: client-server-api "Syncing").

Parameters are validated here (a bad `since`, `timeout`, `filter`, `set_presence` or
boolean is a 400, never a 500); the work is `SyncService.sync`, the `filter` parameter
is resolved by `SyncFilters`.
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.inprocess import SYNC_NO_ACK
from starling.api.routing import requester_of
from starling.errors import MatrixError, invalid_param
from starling.sync.filters import SyncFilters
from starling.sync.service import MAX_TIMEOUT_MS, SyncRequest, SyncService
from starling.sync.tokens import SyncToken

PRESENCE_STATES = ("online", "offline", "unavailable")


class SyncRoutes:
    def __init__(self, sync: SyncService, filters: SyncFilters) -> None:
        self.sync_service = sync
        self.filters = filters

    # GET /_matrix/client/v3/sync
    # (spec: client-server-api/#get_matrixclientv3sync)
    async def sync(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        if "from" in request.query:
            raise invalid_param("'from' is not a /sync parameter; did you mean 'since'?")
        since_raw = request.query.get("since")
        since = SyncToken.parse(since_raw) if since_raw else None
        timeout = query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS)
        full_state = query_bool(request, "full_state")
        stable_state_after = query_bool(request, "use_state_after")
        unstable_state_after = query_bool(request, "org.matrix.msc4222.use_state_after")
        set_presence = request.query.get("set_presence")
        if set_presence is not None and set_presence not in PRESENCE_STATES:
            raise MatrixError(
                400, "M_INVALID_PARAM", f"'set_presence' must be one of {PRESENCE_STATES}"
            )
        sync_filter = await self.filters.for_sync(requester.user_id, request.query.get("filter"))
        response = await self.sync_service.sync(
            SyncRequest(
                user_id=requester.user_id,
                device_id=requester.device_id,
                filter=sync_filter,
                since=since,
                timeout_ms=timeout,
                full_state=full_state,
                set_presence=set_presence,
                use_state_after=stable_state_after or unstable_state_after,
                unstable_state_after=unstable_state_after and not stable_state_after,
                # Only the WebSocket's in-process chained polls set this (never HTTP).
                acknowledge=not request.get(SYNC_NO_ACK, False),
            )
        )
        return json_response(response)
