"""Media repository metadata: media rows, their thumbnails, and cached URL previews.

The files themselves are on disk (starling.media.filestore), named by SHA-256; this store
only says which rows name which file, so the service knows when a file can go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starling.storage.database import Database, Row, UniqueViolation


@dataclass(frozen=True, slots=True)
class MediaInfo:
    server_name: str
    media_id: str
    user_id: str | None
    content_type: str | None
    upload_name: str | None
    media_length: int | None
    sha256: str | None
    created_ts: int
    unused_expires_at: int | None
    last_access_ts: int | None
    quarantined_by: str | None
    authenticated: bool
    url_cache: bool

    @property
    def uploaded(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True, slots=True)
class ThumbnailInfo:
    target_width: int
    target_height: int
    method: str
    animated: bool
    width: int
    height: int
    content_type: str
    media_length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class NewMedia:
    """A media row to insert with its content already on disk."""

    server_name: str
    media_id: str
    user_id: str | None
    content_type: str
    upload_name: str | None
    media_length: int
    sha256: str
    created_ts: int
    authenticated: bool
    url_cache: bool = False


class MediaIdTaken(Exception):
    """The (server_name, media_id) pair already has a row."""


_MEDIA_COLUMNS = (
    "server_name, media_id, user_id, content_type, upload_name, media_length, sha256, "
    "created_ts, unused_expires_at, last_access_ts, quarantined_by, authenticated, url_cache"
)
_THUMB_COLUMNS = (
    "target_width, target_height, method, animated, width, height, content_type, "
    "media_length, sha256"
)


def _media(row: Row) -> MediaInfo:
    return MediaInfo(
        server_name=row["server_name"],
        media_id=row["media_id"],
        user_id=row["user_id"],
        content_type=row["content_type"],
        upload_name=row["upload_name"],
        media_length=row["media_length"],
        sha256=row["sha256"],
        created_ts=row["created_ts"],
        unused_expires_at=row["unused_expires_at"],
        last_access_ts=row["last_access_ts"],
        quarantined_by=row["quarantined_by"],
        authenticated=bool(row["authenticated"]),
        url_cache=bool(row["url_cache"]),
    )


def _thumb(row: Row) -> ThumbnailInfo:
    return ThumbnailInfo(
        target_width=row["target_width"],
        target_height=row["target_height"],
        method=row["method"],
        animated=bool(row["animated"]),
        width=row["width"],
        height=row["height"],
        content_type=row["content_type"],
        media_length=row["media_length"],
        sha256=row["sha256"],
    )


class MediaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- media rows -----------------------------------------------------------------

    async def get_media(self, server_name: str, media_id: str) -> MediaInfo | None:
        row = await self._db.fetch_one(
            f"SELECT {_MEDIA_COLUMNS} FROM media WHERE server_name = ? AND media_id = ?",
            server_name,
            media_id,
        )
        return None if row is None else _media(row)

    async def insert_media(self, m: NewMedia) -> None:
        try:
            await self._db.execute(
                "INSERT INTO media (server_name, media_id, user_id, content_type, upload_name,"
                " media_length, sha256, created_ts, uploaded_ts, authenticated, url_cache)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                m.server_name,
                m.media_id,
                m.user_id,
                m.content_type,
                m.upload_name,
                m.media_length,
                m.sha256,
                m.created_ts,
                m.created_ts,
                m.authenticated,
                m.url_cache,
            )
        except UniqueViolation:
            raise MediaIdTaken(f"{m.server_name}/{m.media_id}") from None

    async def create_pending(
        self,
        server_name: str,
        media_id: str,
        user_id: str,
        created_ts: int,
        unused_expires_at: int,
        authenticated: bool,
    ) -> None:
        """A media ID reserved by POST /create, waiting for its content."""
        try:
            await self._db.execute(
                "INSERT INTO media (server_name, media_id, user_id, created_ts,"
                " unused_expires_at, authenticated) VALUES (?, ?, ?, ?, ?, ?)",
                server_name,
                media_id,
                user_id,
                created_ts,
                unused_expires_at,
                authenticated,
            )
        except UniqueViolation:
            raise MediaIdTaken(f"{server_name}/{media_id}") from None

    async def count_pending(self, user_id: str, now_ms: int) -> int:
        value = await self._db.fetch_val(
            "SELECT COUNT(*) FROM media WHERE user_id = ? AND sha256 IS NULL"
            " AND unused_expires_at > ?",
            user_id,
            now_ms,
        )
        return int(value or 0)

    async def delete_expired_pending(self, now_ms: int) -> int:
        return await self._db.execute(
            "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_at <= ?", now_ms
        )

    async def complete_pending(
        self,
        server_name: str,
        media_id: str,
        *,
        content_type: str,
        upload_name: str | None,
        media_length: int,
        sha256: str,
        uploaded_ts: int,
    ) -> bool:
        """Fill a created media ID with its content; False when it already had some."""
        changed = await self._db.execute(
            "UPDATE media SET content_type = ?, upload_name = ?, media_length = ?, sha256 = ?,"
            " uploaded_ts = ?, unused_expires_at = NULL"
            " WHERE server_name = ? AND media_id = ? AND sha256 IS NULL",
            content_type,
            upload_name,
            media_length,
            sha256,
            uploaded_ts,
            server_name,
            media_id,
        )
        return changed > 0

    async def touch(self, server_name: str, media_id: str, now_ms: int) -> None:
        """Record an access, at most once a minute per media (keeps downloads read-mostly)."""
        await self._db.execute(
            "UPDATE media SET last_access_ts = ? WHERE server_name = ? AND media_id = ?"
            " AND (last_access_ts IS NULL OR last_access_ts < ?)",
            now_ms,
            server_name,
            media_id,
            now_ms - 60_000,
        )

    async def usage(self, user_id: str) -> tuple[int, int]:
        """(bytes, files) of the user's uploads stored here (what counts for quotas)."""
        row = await self._db.fetch_one(
            "SELECT COALESCE(SUM(media_length), 0), COUNT(*) FROM media WHERE user_id = ?"
            " AND sha256 IS NOT NULL AND url_cache = FALSE",
            user_id,
        )
        return (int(row[0] or 0), int(row[1] or 0)) if row is not None else (0, 0)

    async def uploaded_bytes_since(self, user_id: str, since_ms: int) -> int:
        value = await self._db.fetch_val(
            # uploaded_ts, not created_ts: content put into a media ID reserved long ago
            # (POST /create) counts when it arrives.
            "SELECT COALESCE(SUM(media_length), 0) FROM media WHERE user_id = ?"
            " AND uploaded_ts >= ? AND sha256 IS NOT NULL AND url_cache = FALSE",
            user_id,
            since_ms,
        )
        return int(value or 0)

    async def remote_media_unused_since(
        self, local_server: str, before_ts: int, limit: int
    ) -> list[tuple[str, str]]:
        """Cached media of other servers last downloaded (or fetched) before `before_ts`,
        oldest first."""
        rows = await self._db.fetch_all(
            "SELECT server_name, media_id FROM media WHERE server_name <> ?"
            " AND COALESCE(last_access_ts, created_ts) < ?"
            " ORDER BY COALESCE(last_access_ts, created_ts) LIMIT ?",
            local_server,
            before_ts,
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def media_ids_of_user(self, user_id: str) -> list[tuple[str, str]]:
        rows = await self._db.fetch_all(
            "SELECT server_name, media_id FROM media WHERE user_id = ? ORDER BY created_ts",
            user_id,
        )
        return [(r[0], r[1]) for r in rows]

    # --- quarantine -----------------------------------------------------------------

    async def quarantine(self, server_name: str, media_id: str, by: str) -> bool:
        changed = await self._db.execute(
            "UPDATE media SET quarantined_by = ? WHERE server_name = ? AND media_id = ?",
            by,
            server_name,
            media_id,
        )
        return changed > 0

    async def quarantine_user(self, user_id: str, by: str) -> int:
        return await self._db.execute(
            "UPDATE media SET quarantined_by = ? WHERE user_id = ? AND quarantined_by IS NULL",
            by,
            user_id,
        )

    # --- deletion -------------------------------------------------------------------

    async def delete_media(self, server_name: str, media_id: str) -> list[str] | None:
        """Delete a media row and its thumbnails; the SHA-256s they named (for the caller to
        release), or None when there was no such media."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                f"SELECT sha256 FROM media WHERE server_name = ? AND media_id = ?{txn.sql.for_update}",
                server_name,
                media_id,
            )
            if row is None:
                return None
            thumbs = await txn.fetch_all(
                "SELECT sha256 FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
                server_name,
                media_id,
            )
            await txn.execute(
                "DELETE FROM media_thumbnails WHERE server_name = ? AND media_id = ?",
                server_name,
                media_id,
            )
            await txn.execute(
                "DELETE FROM media WHERE server_name = ? AND media_id = ?", server_name, media_id
            )
        hashes = [t[0] for t in thumbs]
        if row[0] is not None:
            hashes.append(row[0])
        return hashes

    async def sha256_in_use(self, sha256: str) -> bool:
        value = await self._db.fetch_val(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM media WHERE sha256 = ?)"
            " OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = ?)",
            sha256,
            sha256,
        )
        return value is not None

    # --- thumbnails -----------------------------------------------------------------

    async def get_thumbnail(
        self,
        server_name: str,
        media_id: str,
        target_width: int,
        target_height: int,
        method: str,
        animated: bool,
    ) -> ThumbnailInfo | None:
        row = await self._db.fetch_one(
            f"SELECT {_THUMB_COLUMNS} FROM media_thumbnails WHERE server_name = ?"
            " AND media_id = ? AND target_width = ? AND target_height = ? AND method = ?"
            " AND animated = ?",
            server_name,
            media_id,
            target_width,
            target_height,
            method,
            animated,
        )
        return None if row is None else _thumb(row)

    async def get_thumbnails(self, server_name: str, media_id: str) -> list[ThumbnailInfo]:
        rows = await self._db.fetch_all(
            f"SELECT {_THUMB_COLUMNS} FROM media_thumbnails WHERE server_name = ?"
            " AND media_id = ? ORDER BY target_width, target_height",
            server_name,
            media_id,
        )
        return [_thumb(r) for r in rows]

    async def upsert_thumbnail(
        self, server_name: str, media_id: str, t: ThumbnailInfo, created_ts: int
    ) -> tuple[bool, str | None]:
        """Store a thumbnail row, replacing one for the same target. Returns (written, the
        SHA-256 of the row replaced); written is False when the media is gone."""
        async with self._db.transaction() as txn:
            exists = await txn.fetch_val(
                f"SELECT 1 FROM media WHERE server_name = ? AND media_id = ?{txn.sql.for_update}",
                server_name,
                media_id,
            )
            if exists is None:
                return False, None
            key = (server_name, media_id, t.target_width, t.target_height, t.method, t.animated)
            where = (
                " WHERE server_name = ? AND media_id = ? AND target_width = ?"
                " AND target_height = ? AND method = ? AND animated = ?"
            )
            old = await txn.fetch_val("SELECT sha256 FROM media_thumbnails" + where, *key)
            await txn.execute("DELETE FROM media_thumbnails" + where, *key)
            await txn.execute(
                f"INSERT INTO media_thumbnails (server_name, media_id, {_THUMB_COLUMNS},"
                " created_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                server_name,
                media_id,
                t.target_width,
                t.target_height,
                t.method,
                t.animated,
                t.width,
                t.height,
                t.content_type,
                t.media_length,
                t.sha256,
                created_ts,
            )
        return True, None if old is None else str(old)

    # --- URL previews ---------------------------------------------------------------

    async def get_url_preview(self, url: str, now_ms: int) -> str | None:
        value = await self._db.fetch_val(
            "SELECT og FROM url_previews WHERE url = ? AND expires_ts > ?", url, now_ms
        )
        return None if value is None else str(value)

    async def store_url_preview(self, url: str, og_json: str, now_ms: int, expires_ts: int) -> None:
        await self._db.execute(
            "INSERT INTO url_previews (url, og, fetched_ts, expires_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (url) DO UPDATE SET og = excluded.og,"
            " fetched_ts = excluded.fetched_ts, expires_ts = excluded.expires_ts",
            url,
            og_json,
            now_ms,
            expires_ts,
        )

    async def delete_expired_url_previews(self, now_ms: int) -> int:
        return await self._db.execute("DELETE FROM url_previews WHERE expires_ts <= ?", now_ms)


def media_row_dict(m: MediaInfo) -> dict[str, Any]:
    """A media row as the admin API shows it."""
    return {
        "media_id": m.media_id,
        "server_name": m.server_name,
        "user_id": m.user_id,
        "media_type": m.content_type,
        "upload_name": m.upload_name,
        "media_length": m.media_length,
        "created_ts": m.created_ts,
        "last_access_ts": m.last_access_ts,
        "quarantined_by": m.quarantined_by,
    }
