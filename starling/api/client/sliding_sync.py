"""Client-Server API: simplified sliding sync (MSC4186), at Synapse's unstable path
POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync.

`pos` and `timeout` are read from the query (as Synapse and Element X send them) or the
body (as the MSC's latest text has them); the body is validated by
`starling.sync.sliding.request`; the work is `SlidingSyncService.sync`.

MSC4360's companion endpoint, GET
/_matrix/client/unstable/io.element.msc4360/thread_updates, pages the thread updates of
the user's joined rooms backwards (`dir=b` only, as the MSC has it).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import query_int
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import invalid_param, missing_param
from starling.sync.service import MAX_TIMEOUT_MS
from starling.sync.sliding.request import THREADS_DEFAULT_LIMIT, THREADS_MAX_LIMIT, parse_request
from starling.sync.sliding.service import SlidingSyncService


class SlidingSyncRoutes:
    def __init__(self, sliding: SlidingSyncService) -> None:
        self.sliding = sliding

    # POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
    # (Synapse SlidingSyncRestServlet; spec: MSC4186)
    async def sync(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        timeout = (
            query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS)
            if "timeout" in request.query
            else None
        )
        body = await read_json_object(request, allow_empty=True)
        req = parse_request(
            body,
            user_id=requester.user_id,
            device_id=requester.device_id,
            pos=request.query.get("pos") or None,
            timeout_ms=timeout,
            set_presence=request.query.get("set_presence"),
        )
        return json_response(await self.sliding.sync(req))

    # GET /_matrix/client/unstable/io.element.msc4360/thread_updates
    # (spec: MSC4360 "Companion endpoint for backpaginating thread updates"; Synapse
    # ThreadUpdatesServlet)
    async def thread_updates(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        direction = request.query.get("dir")
        if direction is None:
            raise missing_param("'dir' is required")
        if direction != "b":
            raise invalid_param("'dir' must be 'b'")
        limit = query_int(request, "limit", THREADS_DEFAULT_LIMIT, minimum=1)
        return json_response(
            await self.sliding.thread_updates(
                requester.user_id,
                requester.device_id,
                request.query.get("from"),
                request.query.get("to"),
                min(limit, THREADS_MAX_LIMIT),
            )
        )
