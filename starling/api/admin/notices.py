"""Admin API: server notices (Synapse: docs/admin_api/server_notices.md)."""

from __future__ import annotations

from aiohttp import web

from starling.admin.notices import ServerNotices
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, post
from starling.errors import bad_json, missing_param
from starling.protocol.identifiers import is_valid_user_id

MAX_TYPE_LENGTH = 255


class AdminNoticeRoutes:
    def __init__(self, notices: ServerNotices) -> None:
        self._notices = notices

    async def send(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/send_server_notice
        (Synapse admin API: docs/admin_api/server_notices.md)"""
        body = await read_json_object(request)
        user_id = body.get("user_id")
        content = body.get("content")
        if user_id is None:
            raise missing_param("Missing 'user_id'")
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise bad_json("'user_id' must be a user ID")
        if content is None:
            raise missing_param("Missing 'content'")
        if not isinstance(content, dict):
            raise bad_json("'content' must be an object")
        event_type = body.get("type", "m.room.message")
        if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_TYPE_LENGTH:
            raise bad_json("'type' must be an event type")
        state_key = body.get("state_key")
        if state_key is not None and not isinstance(state_key, str):
            raise bad_json("'state_key' must be a string")
        event_id = await self._notices.send(user_id, content, event_type, state_key)
        return json_response({"event_id": event_id})

    def routes(self) -> list[Route]:
        return [post("/send_server_notice", self.send, Auth.ADMIN)]
