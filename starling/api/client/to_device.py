"""Client-Server API: send-to-device messaging.

Spec: client-server-api "Send-to-Device messaging" (to_device.yaml).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.e2ee.to_device import ToDeviceService
from starling.errors import invalid_param, missing_param

MAX_TYPE_BYTES = 255
MAX_TXN_ID_BYTES = 255


class ToDeviceRoutes:
    def __init__(self, to_device: ToDeviceService) -> None:
        self.to_device = to_device

    # PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
    # (spec: client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid)
    async def send(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        event_type = request.match_info["eventType"]
        txn_id = request.match_info["txnId"]
        if not event_type or len(event_type.encode()) > MAX_TYPE_BYTES:
            raise invalid_param(f"Event type must be 1-{MAX_TYPE_BYTES} bytes")
        if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
            raise invalid_param(f"Transaction ID must be 1-{MAX_TXN_ID_BYTES} bytes")
        body = await read_json_object(request)
        if "messages" not in body:
            raise missing_param("Missing 'messages'")
        await self.to_device.send(
            requester.user_id, requester.device_id, event_type, txn_id, body["messages"]
        )
        return json_response({})
