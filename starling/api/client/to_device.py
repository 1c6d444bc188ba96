"""Client-Server API: send-to-device messaging.

Spec: client-server-api "Send-to-Device messaging" (to_device.yaml).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.client.common import require_user
from starling.api.http import json_response, read_json_object
from starling.api.services import Services
from starling.errors import invalid_param, missing_param

V3 = "/_matrix/client/v3"
MAX_TYPE_BYTES = 255
MAX_TXN_ID_BYTES = 255


# PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
# (spec: #put_matrixclientv3sendtodeviceeventtypetxnid)
async def send_to_device(request: web.Request, svc: Services) -> web.Response:
    requester = await require_user(request, svc.auth)
    event_type = request.match_info["eventType"]
    txn_id = request.match_info["txnId"]
    if not event_type or len(event_type.encode()) > MAX_TYPE_BYTES:
        raise invalid_param(f"Event type must be 1-{MAX_TYPE_BYTES} bytes")
    if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
        raise invalid_param(f"Transaction ID must be 1-{MAX_TXN_ID_BYTES} bytes")
    body = await read_json_object(request)
    if "messages" not in body:
        raise missing_param("Missing 'messages'")
    await svc.e2ee.to_device.send(
        requester.user_id, requester.device_id, event_type, txn_id, body["messages"]
    )
    return json_response({})


def register(app: web.Application, svc: Services) -> None:
    async def handler(request: web.Request) -> web.Response:
        return await send_to_device(request, svc)

    app.router.add_route("PUT", f"{V3}/sendToDevice/{{eventType}}/{{txnId}}", handler)
