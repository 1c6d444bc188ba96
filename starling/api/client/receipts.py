"""Client-Server API: receipts and read markers.

Spec: client-server-api modules/receipts.md (#post_matrixclientv3roomsroomidreceiptreceipttypeeventid)
and modules/read_markers.md (#post_matrixclientv3roomsroomidread_markers).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import bad_json, invalid_param
from starling.receipts.service import ReceiptsService


def _optional_event_id(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be an event ID string")
    return value


class ReceiptRoutes:
    def __init__(self, receipts: ReceiptsService) -> None:
        self.receipts = receipts

    # POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}
    # (spec: client-server-api/#post_matrixclientv3roomsroomidreceiptreceipttypeeventid)
    async def post_receipt(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        body = await read_json_object(request, allow_empty=True)
        thread_id = body.get("thread_id")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise invalid_param("thread_id field must be a non-empty string")
        await self.receipts.set_receipt(
            room_id,
            requester.user_id,
            request.match_info["receiptType"],
            request.match_info["eventId"],
            thread_id,
        )
        return json_response({})

    # POST /_matrix/client/v3/rooms/{roomId}/read_markers
    # (spec: client-server-api/#post_matrixclientv3roomsroomidread_markers)
    async def post_read_markers(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        body = await read_json_object(request)
        await self.receipts.set_read_markers(
            room_id,
            requester.user_id,
            _optional_event_id(body, "m.fully_read"),
            _optional_event_id(body, "m.read"),
            _optional_event_id(body, "m.read.private"),
        )
        return json_response({})
