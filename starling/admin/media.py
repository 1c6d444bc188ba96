"""Server admins managing media: Synapse's media admin API rules (docs/admin_api/
media_admin_api.md and the user media endpoints of user_admin_api.md), in its shapes.

Quarantined media is no longer served (the media service checks `quarantined_by`); its file
stays. Protected media (`safe_from_quarantine`) is never quarantined. Deletion goes through
the media service, which removes a file once no media or thumbnail names it.
"""

from __future__ import annotations

from typing import Any

from starling.errors import invalid_param, not_found
from starling.media.service import MediaService
from starling.storage.admin_media import MEDIA_ORDERS, AdminMediaRow, AdminMediaStore


def media_json(m: AdminMediaRow) -> dict[str, Any]:
    return {
        "media_id": m.media_id,
        "media_type": m.media_type,
        "media_length": m.media_length,
        "upload_name": m.upload_name,
        "created_ts": m.created_ts,
        "last_access_ts": m.last_access_ts,
        "quarantined_by": m.quarantined_by,
        "safe_from_quarantine": m.safe_from_quarantine,
    }


class AdminMedia:
    def __init__(self, *, server_name: str, store: AdminMediaStore, media: MediaService) -> None:
        self._server_name = server_name
        self._store = store
        self._media = media

    def _local_user(self, user_id: str) -> None:
        if not user_id.endswith(":" + self._server_name):
            raise invalid_param("Can only look up local users")

    async def user_media(
        self, user_id: str, order_by: str | None, backwards: bool | None, start: int, limit: int
    ) -> dict[str, Any]:
        self._local_user(user_id)
        order, back = self._order(order_by, backwards)
        rows, total = await self._store.user_media(user_id, order, back, start, limit)
        body: dict[str, Any] = {"media": [media_json(m) for m in rows], "total": total}
        if start + len(rows) < total:
            body["next_token"] = start + len(rows)
        return body

    @staticmethod
    def _order(order_by: str | None, backwards: bool | None) -> tuple[str, bool]:
        if order_by is not None and order_by not in MEDIA_ORDERS:
            raise invalid_param(f"Unknown value for order_by: {order_by[:40]!r}")
        if order_by is None and backwards is None:
            return "created_ts", True  # newest first, Synapse's default
        return order_by or "created_ts", bool(backwards)

    async def delete_user_media(
        self, user_id: str, order_by: str | None, backwards: bool | None, limit: int
    ) -> list[str]:
        self._local_user(user_id)
        order, back = self._order(order_by, backwards)
        rows, _ = await self._store.user_media(user_id, order, back, 0, limit)
        deleted = []
        for m in rows:
            if await self._media.delete_media(m.server_name, m.media_id):
                deleted.append(m.media_id)
        return deleted

    async def info(self, server_name: str, media_id: str) -> dict[str, Any]:
        m = await self._store.get(server_name, media_id)
        if m is None:
            raise not_found("Unknown media")
        return {
            **media_json(m),
            "media_origin": m.server_name,
            "user_id": m.user_id,
            "filesystem_id": m.sha256,
            "sha256": m.sha256,
            "url_cache": m.url_cache,
            "authenticated": m.authenticated,
        }

    async def quarantine(self, admin_id: str, server_name: str, media_id: str) -> None:
        """Quarantining media that is protected or unknown is not an error (Synapse)."""
        await self._store.set_quarantined(server_name, media_id, admin_id)

    async def unquarantine(self, server_name: str, media_id: str) -> None:
        await self._store.set_quarantined(server_name, media_id, None)

    async def quarantine_room(self, admin_id: str, room_id: str) -> int:
        count = 0
        for server_name, media_id in await self._store.room_media(room_id):
            if await self._store.set_quarantined(server_name, media_id, admin_id):
                count += 1
        return count

    async def quarantine_user(self, admin_id: str, user_id: str) -> int:
        self._local_user(user_id)
        return await self._store.quarantine_user(user_id, admin_id)

    async def protect(self, media_id: str, protected: bool) -> None:
        if not await self._store.set_protected(media_id, protected):
            raise not_found("Unknown media")

    async def room_media(self, room_id: str) -> dict[str, list[str]]:
        local: list[str] = []
        remote: list[str] = []
        for server_name, media_id in await self._store.room_media(room_id):
            uri = f"mxc://{server_name}/{media_id}"
            (local if server_name == self._server_name else remote).append(uri)
        return {"local": local, "remote": remote}

    async def delete_one(self, server_name: str, media_id: str) -> list[str]:
        if server_name != self._server_name:
            raise invalid_param("Can only delete local media")
        if not await self._media.delete_media(server_name, media_id):
            raise not_found("Unknown media")
        return [media_id]

    async def delete_old(self, before_ts: int, size_gt: int, keep_profiles: bool) -> list[str]:
        deleted = []
        for media_id in await self._store.local_media_before(before_ts, size_gt, keep_profiles):
            if await self._media.delete_media(self._server_name, media_id):
                deleted.append(media_id)
        return deleted

    async def usage_by_user(
        self,
        *,
        order_by: str,
        backwards: bool,
        start: int,
        limit: int,
        from_ts: int | None,
        until_ts: int | None,
        search: str | None,
    ) -> dict[str, Any]:
        """GET /_synapse/admin/v1/statistics/users/media."""
        if order_by not in ("user_id", "displayname", "media_length", "media_count"):
            raise invalid_param(f"Unknown value for order_by: {order_by[:40]!r}")
        rows, total = await self._store.usage_by_user(
            order_by=order_by,
            backwards=backwards,
            start=start,
            limit=limit,
            from_ts=from_ts,
            until_ts=until_ts,
            search=search,
        )
        body: dict[str, Any] = {
            "users": [
                {"user_id": u, "displayname": d, "media_count": n, "media_length": size}
                for u, d, n, size in rows
            ],
            "total": total,
        }
        if start + len(rows) < total:
            body["next_token"] = start + len(rows)
        return body

    async def purge_remote_cache(self, before_ts: int) -> int:
        count = 0
        for server_name, media_id in await self._store.remote_media_before(before_ts):
            if await self._media.delete_media(server_name, media_id):
                count += 1
        return count
