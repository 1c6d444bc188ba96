"""Client-Server API: dehydrated devices (MSC3814) at Synapse's unstable prefix
/_matrix/client/unstable/org.matrix.msc3814.v1. The work is `starling.e2ee.dehydrated`."""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.e2ee.dehydrated import DehydratedDevices

PREFIX = "unstable/org.matrix.msc3814.v1"


class DehydratedDeviceRoutes:
    def __init__(self, service: DehydratedDevices) -> None:
        self.service = service

    # PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
    # (spec: MSC3814 "Dehydrating a device"; Synapse DehydratedDeviceV2Servlet)
    async def put(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        return json_response(await self.service.put(requester.user_id, body))

    # GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
    # (spec: MSC3814 "Rehydrating a device"; Synapse DehydratedDeviceV2Servlet)
    async def get(self, request: web.Request) -> web.Response:
        return json_response(await self.service.get(requester_of(request).user_id))

    # DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
    # (spec: MSC3814 "Deleting a dehydrated device"; Synapse DehydratedDeviceV2Servlet)
    async def delete(self, request: web.Request) -> web.Response:
        return json_response(await self.service.delete(requester_of(request).user_id))

    # GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events
    # (spec: MSC3814 "Getting the events"; the `from` query parameter, as matrix-js-sdk sends)
    async def events(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        return json_response(
            await self.service.events(
                requester.user_id, request.match_info["deviceId"], request.query.get("from")
            )
        )

    # POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events
    # (spec: MSC3814's earlier text, `next_batch` in the body; Synapse
    # DehydratedDeviceEventsServlet)
    async def events_post(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request, allow_empty=True)
        return json_response(
            await self.service.events(
                requester.user_id, request.match_info["deviceId"], body.get("next_batch")
            )
        )
