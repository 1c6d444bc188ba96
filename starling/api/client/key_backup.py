"""Client-Server API: server-side key backups.

Spec: client-server-api "Server-side key backups" (key_backup.yaml): /room_keys/version
and /room_keys/keys with its per-room and per-session forms.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.e2ee.key_backup import KeyBackupService, RoomKey, parse_room_key
from starling.errors import bad_json


def _sessions(room_id: str, body: Any) -> list[RoomKey]:
    if not isinstance(body, dict) or not isinstance(body.get("sessions"), dict):
        raise bad_json("Expected {'sessions': {session ID: key data}}")
    return [parse_room_key(room_id, sid, data) for sid, data in body["sessions"].items()]


class KeyBackupRoutes:
    def __init__(self, key_backup: KeyBackupService) -> None:
        self.key_backup = key_backup

    # POST /_matrix/client/v3/room_keys/version
    # (spec: client-server-api/#post_matrixclientv3room_keysversion)
    async def create_version(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        return json_response(await self.key_backup.create_version(requester.user_id, body))

    # GET /_matrix/client/v3/room_keys/version
    # GET /_matrix/client/v3/room_keys/version/{version}
    # (spec: client-server-api/#get_matrixclientv3room_keysversion)
    async def get_version(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        version = request.match_info.get("version")
        return json_response(await self.key_backup.get_version(requester.user_id, version))

    # PUT /_matrix/client/v3/room_keys/version/{version}
    # (spec: client-server-api/#put_matrixclientv3room_keysversionversion)
    async def update_version(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        await self.key_backup.update_version(requester.user_id, request.match_info["version"], body)
        return json_response({})

    # DELETE /_matrix/client/v3/room_keys/version/{version}
    # (spec: client-server-api/#delete_matrixclientv3room_keysversionversion)
    async def delete_version(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        await self.key_backup.delete_version(requester.user_id, request.match_info["version"])
        return json_response({})

    # PUT /_matrix/client/v3/room_keys/keys
    # PUT /_matrix/client/v3/room_keys/keys/{roomId}
    # PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
    # (spec: client-server-api/#put_matrixclientv3room_keyskeys)
    async def put_keys(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        body = await read_json_object(request)
        room_id = request.match_info.get("keyRoomId")
        session_id = request.match_info.get("sessionId")
        keys: list[RoomKey]
        if room_id is None:
            rooms = body.get("rooms")
            if not isinstance(rooms, dict):
                raise bad_json("Expected {'rooms': {room ID: {'sessions': ...}}}")
            keys = [k for rid, room in rooms.items() for k in _sessions(rid, room)]
        elif session_id is None:
            keys = _sessions(room_id, body)
        else:
            keys = [parse_room_key(room_id, session_id, body)]
        result = await self.key_backup.put_keys(
            requester.user_id, request.query.get("version"), keys
        )
        return json_response(result)

    # GET /_matrix/client/v3/room_keys/keys
    # GET /_matrix/client/v3/room_keys/keys/{roomId}
    # GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
    # (spec: client-server-api/#get_matrixclientv3room_keyskeys)
    async def get_keys(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        result = await self.key_backup.get_keys(
            requester.user_id,
            request.query.get("version"),
            request.match_info.get("keyRoomId"),
            request.match_info.get("sessionId"),
        )
        return json_response(result)

    # DELETE /_matrix/client/v3/room_keys/keys
    # DELETE /_matrix/client/v3/room_keys/keys/{roomId}
    # DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}
    # (spec: client-server-api/#delete_matrixclientv3room_keyskeys)
    async def delete_keys(self, request: web.Request) -> web.Response:
        requester = requester_of(request)
        result = await self.key_backup.delete_keys(
            requester.user_id,
            request.query.get("version"),
            request.match_info.get("keyRoomId"),
            request.match_info.get("sessionId"),
        )
        return json_response(result)
