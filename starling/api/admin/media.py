"""Admin API: media on Synapse's paths (Synapse: docs/admin_api/media_admin_api.md and the
user media endpoints of docs/admin_api/user_admin_api.md)."""

from __future__ import annotations

from aiohttp import web

from starling.admin.media import AdminMedia
from starling.api.admin.common import backwards
from starling.api.client.common import query_bool, query_int
from starling.api.http import json_response
from starling.api.routing import Auth, Route, delete, get, post, requester_of
from starling.errors import missing_param

MAX_LIMIT = 1000


def _optional_backwards(request: web.Request) -> bool | None:
    return backwards(request) if "dir" in request.query else None


def _before_ts(request: web.Request) -> int:
    if "before_ts" not in request.query:
        raise missing_param("Missing 'before_ts'")
    return query_int(request, "before_ts", 0, maximum=2**62)


class AdminMediaRoutes:
    def __init__(self, media: AdminMedia) -> None:
        self._media = media

    async def user_media(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/users/{userId}/media
        (Synapse admin API: docs/admin_api/user_admin_api.md#list-media-uploaded-by-a-user)"""
        return json_response(
            await self._media.user_media(
                request.match_info["userId"],
                request.query.get("order_by"),
                _optional_backwards(request),
                query_int(request, "from", 0),
                query_int(request, "limit", 100, maximum=MAX_LIMIT),
            )
        )

    async def delete_user_media(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/users/{userId}/media
        (Synapse admin API: docs/admin_api/user_admin_api.md#delete-media-uploaded-by-a-user)"""
        deleted = await self._media.delete_user_media(
            request.match_info["userId"],
            request.query.get("order_by"),
            _optional_backwards(request),
            query_int(request, "limit", 100, maximum=MAX_LIMIT),
        )
        return json_response({"deleted_media": deleted, "total": len(deleted)})

    async def info(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/media/{serverName}/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#query-a-piece-of-media-by-id)"""
        info = await self._media.info(
            request.match_info["serverName"], request.match_info["mediaId"]
        )
        return json_response({"media_info": info})

    async def quarantine(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#quarantining-media-by-id)"""
        await self._media.quarantine(
            requester_of(request).user_id,
            request.match_info["serverName"],
            request.match_info["mediaId"],
        )
        return json_response({})

    async def unquarantine(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#remove-media-from-quarantine-by-id)"""
        await self._media.unquarantine(
            request.match_info["serverName"], request.match_info["mediaId"]
        )
        return json_response({})

    async def quarantine_room(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/room/{roomId}/media/quarantine
        (Synapse admin API: docs/admin_api/media_admin_api.md#quarantining-media-in-a-room)"""
        count = await self._media.quarantine_room(
            requester_of(request).user_id, request.match_info["roomId"]
        )
        return json_response({"num_quarantined": count})

    async def quarantine_user(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/user/{userId}/media/quarantine
        (Synapse admin API: docs/admin_api/media_admin_api.md#quarantining-all-media-of-a-user)"""
        count = await self._media.quarantine_user(
            requester_of(request).user_id, request.match_info["userId"]
        )
        return json_response({"num_quarantined": count})

    async def protect(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/media/protect/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#protecting-media-from-being-quarantined)"""
        await self._media.protect(request.match_info["mediaId"], True)
        return json_response({})

    async def unprotect(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/media/unprotect/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#unprotecting-media-from-being-quarantined)"""
        await self._media.protect(request.match_info["mediaId"], False)
        return json_response({})

    async def room_media(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/room/{roomId}/media
        (Synapse admin API: docs/admin_api/media_admin_api.md#list-all-media-in-a-room)"""
        return json_response(await self._media.room_media(request.match_info["roomId"]))

    async def delete_one(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}
        (Synapse admin API: docs/admin_api/media_admin_api.md#delete-a-specific-local-media)"""
        deleted = await self._media.delete_one(
            request.match_info["serverName"], request.match_info["mediaId"]
        )
        return json_response({"deleted_media": deleted, "total": len(deleted)})

    async def delete_old(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/media/delete?before_ts=&size_gt=&keep_profiles=
        (Synapse admin API: docs/admin_api/media_admin_api.md#delete-local-media-by-date-or-size)"""
        deleted = await self._media.delete_old(
            _before_ts(request),
            query_int(request, "size_gt", 0, maximum=2**62),
            query_bool(request, "keep_profiles", True),
        )
        return json_response({"deleted_media": deleted, "total": len(deleted)})

    async def purge_cache(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/purge_media_cache?before_ts=
        (Synapse admin API: docs/admin_api/media_admin_api.md#purge-remote-media-api)"""
        return json_response({"deleted": await self._media.purge_remote_cache(_before_ts(request))})

    def routes(self) -> list[Route]:
        return [
            get("/users/{userId}/media", self.user_media, Auth.ADMIN),
            delete("/users/{userId}/media", self.delete_user_media, Auth.ADMIN),
            post("/media/delete", self.delete_old, Auth.ADMIN),
            post("/media/{serverName}/delete", self.delete_old, Auth.ADMIN),
            get("/media/{serverName}/{mediaId}", self.info, Auth.ADMIN),
            delete("/media/{serverName}/{mediaId}", self.delete_one, Auth.ADMIN),
            post("/media/quarantine/{serverName}/{mediaId}", self.quarantine, Auth.ADMIN),
            post("/media/unquarantine/{serverName}/{mediaId}", self.unquarantine, Auth.ADMIN),
            post("/room/{roomId}/media/quarantine", self.quarantine_room, Auth.ADMIN),
            post("/quarantine_media/{roomId}", self.quarantine_room, Auth.ADMIN),
            post("/user/{userId}/media/quarantine", self.quarantine_user, Auth.ADMIN),
            post("/media/protect/{mediaId}", self.protect, Auth.ADMIN),
            post("/media/unprotect/{mediaId}", self.unprotect, Auth.ADMIN),
            get("/room/{roomId}/media", self.room_media, Auth.ADMIN),
            post("/purge_media_cache", self.purge_cache, Auth.ADMIN),
        ]
