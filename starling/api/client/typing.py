"""Client-Server API: typing notifications.

Spec: client-server-api modules/typing_notifications.md
(#put_matrixclientv3roomsroomidtypinguserid).
"""

from __future__ import annotations

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import bad_json, forbidden, invalid_param, missing_param
from starling.typing.service import DEFAULT_TYPING_TIMEOUT_MS, TypingService


class TypingRoutes:
    def __init__(self, typing: TypingService) -> None:
        self.typing = typing

    # PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}
    # (spec: client-server-api/#put_matrixclientv3roomsroomidtypinguserid)
    async def put_typing(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        room_id = request.match_info["roomId"]
        user_id = request.match_info["userId"]
        if user_id != requester.user_id:
            raise forbidden("You can only set your own typing state")
        body = await read_json_object(request)
        typing = body.get("typing")
        if typing is None:
            raise missing_param("Missing 'typing'")
        if not isinstance(typing, bool):
            raise bad_json("'typing' must be a boolean")
        timeout = body.get("timeout", DEFAULT_TYPING_TIMEOUT_MS)
        if typing:
            if isinstance(timeout, bool) or not isinstance(timeout, int):
                raise bad_json("'timeout' must be an integer")
            if timeout < 0:
                raise invalid_param("'timeout' must not be negative")
        await self.typing.set_typing(room_id, user_id, typing, timeout)
        return json_response({})
