"""What the admin API reads and changes on media beyond serving it: a user's media paged
and ordered, quarantine and protection flags, the media a room's events name, and the
candidates for deletion by age and size (local) or age (the remote-media cache).

Deleting rows and files stays with the media store and service (one place releases files).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson

from starling.storage.database import Database, Row

# order_by -> column (Synapse's names); ties go by media_id ascending.
MEDIA_ORDERS: dict[str, str] = {
    "media_id": "media_id",
    "upload_name": "upload_name",
    "created_ts": "created_ts",
    "last_access_ts": "last_access_ts",
    "media_length": "media_length",
    "media_type": "content_type",
    "quarantined_by": "quarantined_by",
    "safe_from_quarantine": "safe_from_quarantine",
}
_NULLABLE = frozenset(
    {"upload_name", "last_access_ts", "media_length", "media_type", "quarantined_by"}
)
_MXC = re.compile(r"^mxc://([A-Za-z0-9.:\[\]-]+)/([A-Za-z0-9_-]+)\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class AdminMediaRow:
    server_name: str
    media_id: str
    user_id: str | None
    media_type: str | None
    upload_name: str | None
    media_length: int | None
    created_ts: int
    last_access_ts: int | None
    quarantined_by: str | None
    safe_from_quarantine: bool
    authenticated: bool
    url_cache: bool
    sha256: str | None


_COLUMNS = (
    "server_name, media_id, user_id, content_type, upload_name, media_length, created_ts,"
    " last_access_ts, quarantined_by, safe_from_quarantine, authenticated, url_cache, sha256"
)


def _row(r: Row) -> AdminMediaRow:
    return AdminMediaRow(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        bool(r[9]),
        bool(r[10]),
        bool(r[11]),
        r[12],
    )


def _mxc_uris(value: Any, out: set[tuple[str, str]]) -> None:
    """Every mxc:// URI in `url`, `thumbnail_url` or `avatar_url`-like fields, nested."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, str) and key in ("url", "thumbnail_url", "avatar_url"):
                found = _MXC.match(inner)
                if found:
                    out.add((found[1], found[2]))
            else:
                _mxc_uris(inner, out)
    elif isinstance(value, list):
        for inner in value:
            _mxc_uris(inner, out)


class AdminMediaStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._server_name = server_name

    async def get(self, server_name: str, media_id: str) -> AdminMediaRow | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM media WHERE server_name = ? AND media_id = ?",
            server_name,
            media_id,
        )
        return None if row is None else _row(row)

    async def user_media(
        self, user_id: str, order_by: str, backwards: bool, start: int, limit: int
    ) -> tuple[list[AdminMediaRow], int]:
        """A page of the local media `user_id` uploaded (pending creations left out)."""
        where = "WHERE server_name = ? AND user_id = ? AND sha256 IS NOT NULL"
        args = [self._server_name, user_id]
        total = await self._db.fetch_val(f"SELECT COUNT(*) FROM media {where}", *args)
        column = MEDIA_ORDERS[order_by]
        direction = "DESC" if backwards else "ASC"
        nulls = f"({column} IS NOT NULL) {direction}, " if order_by in _NULLABLE else ""
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM media {where}"
            f" ORDER BY {nulls}{column} {direction}, media_id ASC LIMIT ? OFFSET ?",
            *args,
            limit,
            start,
        )
        return [_row(r) for r in rows], int(total or 0)

    async def set_quarantined(self, server_name: str, media_id: str, by: str | None) -> bool:
        """Quarantine (by an admin) or release one media; protected media is never
        quarantined. False if there is no such media (or it is protected)."""
        protected = "" if by is None else " AND NOT safe_from_quarantine"
        return bool(
            await self._db.execute(
                f"UPDATE media SET quarantined_by = ? WHERE server_name = ? AND media_id = ?{protected}",
                by,
                server_name,
                media_id,
            )
        )

    async def quarantine_user(self, user_id: str, by: str) -> int:
        return await self._db.execute(
            "UPDATE media SET quarantined_by = ? WHERE user_id = ? AND quarantined_by IS NULL"
            " AND NOT safe_from_quarantine",
            by,
            user_id,
        )

    async def set_protected(self, media_id: str, protected: bool) -> bool:
        """Local media only (Synapse's protect takes a bare media ID)."""
        return bool(
            await self._db.execute(
                "UPDATE media SET safe_from_quarantine = ? WHERE server_name = ? AND media_id = ?",
                protected,
                self._server_name,
                media_id,
            )
        )

    async def room_media(self, room_id: str) -> list[tuple[str, str]]:
        """(server, media ID) of every mxc URI the room's events carry, sorted."""
        found: set[tuple[str, str]] = set()
        rows = await self._db.fetch_all(
            "SELECT json FROM events WHERE room_id = ? AND redacted_by IS NULL"
            " AND rejected_reason IS NULL",
            room_id,
        )
        for (raw,) in rows:
            _mxc_uris(orjson.loads(raw).get("content"), found)
        return sorted(found)

    async def local_media_before(
        self, before_ts: int, size_gt: int, keep_profiles: bool
    ) -> list[str]:
        """Local media last used (accessed, else uploaded) before `before_ts`, larger than
        `size_gt`, not protected; with `keep_profiles` not any user's or room's avatar."""
        keep: set[str] = set()
        if keep_profiles:
            prefix = f"mxc://{self._server_name}/"
            for (url,) in await self._db.fetch_all(
                "SELECT avatar_url FROM profiles WHERE avatar_url IS NOT NULL"
            ):
                if url.startswith(prefix):
                    keep.add(url[len(prefix) :])
            for (raw,) in await self._db.fetch_all(
                "SELECT e.json FROM current_state AS cs"
                " JOIN state_keys AS sk ON sk.key_nid = cs.key_nid"
                " JOIN events AS e ON e.event_nid = cs.event_nid"
                " WHERE sk.type IN ('m.room.avatar', 'm.room.member')"
            ):
                uris: set[tuple[str, str]] = set()
                _mxc_uris(orjson.loads(raw).get("content"), uris)
                keep.update(m for s, m in uris if s == self._server_name)
        rows = await self._db.fetch_all(
            "SELECT media_id FROM media WHERE server_name = ? AND sha256 IS NOT NULL"
            " AND COALESCE(last_access_ts, created_ts) < ? AND COALESCE(media_length, 0) > ?"
            " AND NOT safe_from_quarantine ORDER BY media_id",
            self._server_name,
            before_ts,
            size_gt,
        )
        return [r[0] for r in rows if r[0] not in keep]

    async def remote_media_before(self, before_ts: int) -> list[tuple[str, str]]:
        rows = await self._db.fetch_all(
            "SELECT server_name, media_id FROM media WHERE server_name <> ?"
            " AND COALESCE(last_access_ts, created_ts) < ? ORDER BY server_name, media_id",
            self._server_name,
            before_ts,
        )
        return [(r[0], r[1]) for r in rows]

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
    ) -> tuple[list[tuple[str, str | None, int, int]], int]:
        """(user_id, displayname, media_count, media_length) of users with local uploads,
        one page, and how many users match."""
        media_where = ["m.server_name = ?", "m.user_id IS NOT NULL", "m.sha256 IS NOT NULL"]
        args: list[Any] = [self._server_name]
        if from_ts is not None:
            media_where.append("m.created_ts >= ?")
            args.append(from_ts)
        if until_ts is not None:
            media_where.append("m.created_ts <= ?")
            args.append(until_ts)
        outer = ""
        if search:
            escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            outer = "WHERE LOWER(s.user_id) LIKE ? ESCAPE '\\' OR LOWER(p.displayname) LIKE ? ESCAPE '\\'"
            args += [f"%{escaped}%"] * 2
        inner = (
            "SELECT m.user_id, COUNT(*) AS media_count, SUM(COALESCE(m.media_length, 0))"
            f" AS media_length FROM media AS m WHERE {' AND '.join(media_where)} GROUP BY m.user_id"
        )
        base = f"FROM ({inner}) AS s LEFT JOIN profiles AS p ON p.user_id = s.user_id {outer}"
        total = await self._db.fetch_val(f"SELECT COUNT(*) {base}", *args)
        column = {
            "user_id": "s.user_id",
            "displayname": "p.displayname",
            "media_length": "s.media_length",
            "media_count": "s.media_count",
        }[order_by]
        direction = "DESC" if backwards else "ASC"
        rows = await self._db.fetch_all(
            f"SELECT s.user_id, p.displayname, s.media_count, s.media_length {base}"
            f" ORDER BY {column} {direction}, s.user_id ASC LIMIT ? OFFSET ?",
            *args,
            limit,
            start,
        )
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows], int(total or 0)
