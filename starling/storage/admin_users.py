"""What the admin API reads and sets on accounts beyond what logins need: the paged,
filtered user list, one user's details with profile and last-seen time, and the admin
flags (locked, shadow-banned, erased, reactivation).

Narrow by design (DESIGN §4): the admin users service gets this; the accounts service keeps
`AccountStore` for sessions and devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starling.storage.database import Database, Row


@dataclasses.dataclass(frozen=True, slots=True)
class UserDetails:
    user_id: str
    is_guest: bool
    admin: bool
    deactivated: bool
    erased: bool
    shadow_banned: bool
    locked: bool
    displayname: str | None
    avatar_url: str | None
    creation_ts: int
    last_seen_ts: int | None
    appservice_id: str | None
    approved: bool
    user_type: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class UserFilter:
    """Which users a listing returns (Synapse's /v2/users and /v3/users parameters)."""

    user_id: str | None = None
    """Substring of the user ID (ignored when ``name`` is given)."""
    name: str | None = None
    """Substring of the user ID or the display name, case-insensitively."""
    guests: bool = True
    admins: bool | None = None
    deactivated: bool | None = False
    """True: only deactivated; False: no deactivated; None: both."""
    locked: bool = False
    """Whether locked users are included."""
    approved: bool | None = None
    """True: only approved users; False: only those waiting for approval; None: both."""
    not_user_types: tuple[str, ...] = ()
    """Synapse's ``not_user_type`` (repeatable): users of these types are left out; ""
    stands for users without a type."""


# order_by value -> column (Synapse's names).
ORDER_COLUMNS: dict[str, str] = {
    "name": "u.user_id",
    "is_guest": "u.is_guest",
    "admin": "u.admin",
    "user_type": "u.user_type",
    "deactivated": "u.deactivated",
    "shadow_banned": "u.shadow_banned",
    "displayname": "p.displayname",
    "avatar_url": "p.avatar_url",
    "creation_ts": "u.created_ts",
    "last_seen_ts": "(SELECT MAX(d.last_seen_ts) FROM devices AS d WHERE d.user_id = u.user_id)",
}
_NULLABLE_ORDERS = frozenset({"displayname", "avatar_url", "last_seen_ts", "user_type"})

_DETAIL_COLUMNS = (
    "u.user_id, u.is_guest, u.admin, u.deactivated, u.erased, u.shadow_banned, u.locked,"
    " p.displayname, p.avatar_url, u.created_ts,"
    " (SELECT MAX(d.last_seen_ts) FROM devices AS d WHERE d.user_id = u.user_id)"
    " AS last_seen_ts, u.appservice_id, u.approved, u.user_type"
)
_FROM = "FROM users AS u LEFT JOIN profiles AS p ON p.user_id = u.user_id"


def _details(row: Row) -> UserDetails:
    return UserDetails(
        user_id=row[0],
        is_guest=bool(row[1]),
        admin=bool(row[2]),
        deactivated=bool(row[3]),
        erased=bool(row[4]),
        shadow_banned=bool(row[5]),
        locked=bool(row[6]),
        displayname=row[7],
        avatar_url=row[8],
        creation_ts=row[9],
        last_seen_ts=row[10],
        appservice_id=row[11],
        approved=bool(row[12]),
        user_type=row[13],
    )


def _like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in `text` escaped (ESCAPE '\\')."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class AdminUserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_details(self, user_id: str) -> UserDetails | None:
        row = await self._db.fetch_one(
            f"SELECT {_DETAIL_COLUMNS} {_FROM} WHERE u.user_id = ?", user_id
        )
        return None if row is None else _details(row)

    async def list_users(
        self, where: UserFilter, order_by: str, backwards: bool, start: int, limit: int
    ) -> tuple[list[UserDetails], int]:
        """One page of users and how many match in all. `order_by` is a key of
        `ORDER_COLUMNS`; ties are broken by ascending user ID."""
        clauses: list[str] = []
        args: list[Any] = []
        if "" in where.not_user_types:
            clauses.append("u.user_type IS NOT NULL")
        types = [t for t in where.not_user_types if t]
        if types:
            clauses.append(f"(u.user_type IS NULL OR NOT {self._db.sql.in_array('u.user_type')})")
            args.append(self._db.sql.array(types))
        if where.name is not None:
            clauses.append(
                "(LOWER(u.user_id) LIKE ? ESCAPE '\\' OR LOWER(p.displayname) LIKE ? ESCAPE '\\')"
            )
            args += [_like_pattern(where.name)] * 2
        elif where.user_id is not None:
            clauses.append("LOWER(u.user_id) LIKE ? ESCAPE '\\'")
            args.append(_like_pattern(where.user_id))
        if not where.guests:
            clauses.append("NOT u.is_guest")
        if where.admins is not None:
            clauses.append("u.admin" if where.admins else "NOT u.admin")
        if where.deactivated is not None:
            clauses.append("u.deactivated" if where.deactivated else "NOT u.deactivated")
        if where.approved is not None:
            clauses.append("u.approved" if where.approved else "NOT u.approved")
        if not where.locked:
            clauses.append("NOT u.locked")
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = await self._db.fetch_val(f"SELECT COUNT(*) {_FROM} {condition}", *args)
        column = ORDER_COLUMNS[order_by]
        direction = "DESC" if backwards else "ASC"
        # NULLs sort first going forwards on both engines (PostgreSQL puts them last).
        null_order = f"({column} IS NOT NULL) {direction}, " if order_by in _NULLABLE_ORDERS else ""
        rows = await self._db.fetch_all(
            f"SELECT {_DETAIL_COLUMNS} {_FROM} {condition}"
            f" ORDER BY {null_order}{column} {direction}, u.user_id ASC LIMIT ? OFFSET ?",
            *args,
            limit,
            start,
        )
        return [_details(r) for r in rows], int(total or 0)

    async def set_flag(self, user_id: str, flag: str, value: bool) -> bool:
        """Set ``locked``, ``shadow_banned``, ``erased`` or ``approved``; False if there is
        no such user."""
        if flag not in ("locked", "shadow_banned", "erased", "approved"):
            raise ValueError(flag)
        return bool(
            await self._db.execute(f"UPDATE users SET {flag} = ? WHERE user_id = ?", value, user_id)
        )

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self._db.execute(
            "UPDATE users SET user_type = ? WHERE user_id = ?", user_type, user_id
        )

    # -- third-party IDs

    async def threepids(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch_all(
            "SELECT medium, address, added_at, validated_at FROM user_threepids"
            " WHERE user_id = ? ORDER BY medium, address",
            user_id,
        )
        return [
            {"medium": r[0], "address": r[1], "added_at": r[2], "validated_at": r[3]} for r in rows
        ]

    async def threepid_taken(self, user_id: str, threepids: list[tuple[str, str]]) -> str | None:
        """The first of `threepids` that belongs to another user, if any."""
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT medium, address FROM user_threepids"
            f" WHERE {sql.in_array('address')} AND user_id != ? ORDER BY address",
            sql.array(sorted({a for _, a in threepids})),
            user_id,
        )
        wanted = set(threepids)
        return next((str(r[1]) for r in rows if (r[0], r[1]) in wanted), None)

    async def set_threepids(
        self, user_id: str, threepids: list[tuple[str, str]], now_ms: int
    ) -> str | None:
        """Make the user's third-party IDs exactly `threepids` (those kept keep their
        times). Changes nothing and returns the address when one belongs to another user."""
        wanted = set(threepids)
        sql = self._db.sql
        async with self._db.transaction() as txn:
            taken = await txn.fetch_all(
                "SELECT medium, address FROM user_threepids"
                f" WHERE {sql.in_array('address')} AND user_id != ?",
                sql.array(sorted({a for _, a in wanted})),
                user_id,
            )
            for medium, address in taken:
                if (medium, address) in wanted:
                    return str(address)
            current = {
                (r[0], r[1])
                for r in await txn.fetch_all(
                    "SELECT medium, address FROM user_threepids WHERE user_id = ?", user_id
                )
            }
            for medium, address in current - wanted:
                await txn.execute(
                    "DELETE FROM user_threepids WHERE medium = ? AND address = ?", medium, address
                )
            await txn.executemany(
                "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(user_id, m, a, now_ms, now_ms) for m, a in sorted(wanted - current)],
            )
        return None

    async def user_by_threepid(self, medium: str, address: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", medium, address
        )
        return None if value is None else str(value)

    # -- external identities (user_external_ids, shared with SSO/LDAP login)

    async def external_ids(self, user_id: str) -> list[dict[str, str]]:
        rows = await self._db.fetch_all(
            "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?"
            " ORDER BY auth_provider, external_id",
            user_id,
        )
        return [{"auth_provider": r[0], "external_id": r[1]} for r in rows]

    async def external_id_taken(
        self, user_id: str, ids: list[tuple[str, str]]
    ) -> tuple[str, str] | None:
        """The first of `ids` (provider, external ID) linked to another user, if any."""
        sql = self._db.sql
        rows = await self._db.fetch_all(
            "SELECT auth_provider, external_id FROM user_external_ids"
            f" WHERE {sql.in_array('external_id')} AND user_id != ?"
            " ORDER BY auth_provider, external_id",
            sql.array(sorted({e for _, e in ids})),
            user_id,
        )
        wanted = set(ids)
        return next(((str(r[0]), str(r[1])) for r in rows if (r[0], r[1]) in wanted), None)

    async def set_external_ids(self, user_id: str, ids: list[tuple[str, str]]) -> None:
        """Make the user's external identities exactly `ids` (the caller checked that
        none is another user's; the primary key refuses a race)."""
        wanted = set(ids)
        async with self._db.transaction() as txn:
            current = {
                (str(r[0]), str(r[1]))
                for r in await txn.fetch_all(
                    "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?",
                    user_id,
                )
            }
            for provider, external_id in current - wanted:
                await txn.execute(
                    "DELETE FROM user_external_ids WHERE auth_provider = ? AND external_id = ?",
                    provider,
                    external_id,
                )
            await txn.executemany(
                "INSERT INTO user_external_ids (auth_provider, external_id, user_id)"
                " VALUES (?, ?, ?)",
                [(p, e, user_id) for p, e in sorted(wanted - current)],
            )

    async def user_by_external_id(self, provider: str, external_id: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT user_id FROM user_external_ids WHERE auth_provider = ? AND external_id = ?",
            provider,
            external_id,
        )
        return None if value is None else str(value)

    async def reactivate(self, user_id: str, password_hash: str | None) -> bool:
        return bool(
            await self._db.execute(
                "UPDATE users SET deactivated = FALSE, erased = FALSE, password_hash = ?"
                " WHERE user_id = ?",
                password_hash,
                user_id,
            )
        )

    async def account_data(self, user_id: str) -> list[tuple[str, str, str]]:
        """(room ID, "" for global; type; content JSON) of all the user's account data."""
        rows = await self._db.fetch_all(
            "SELECT room_id, data_type, content FROM account_data WHERE user_id = ?"
            " ORDER BY room_id, data_type",
            user_id,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def rate_limit_overrides(self) -> list[tuple[str, int, int]]:
        rows = await self._db.fetch_all(
            "SELECT user_id, messages_per_second, burst_count FROM ratelimit_override"
        )
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    async def set_rate_limit_override(
        self, user_id: str, messages_per_second: int, burst_count: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO ratelimit_override (user_id, messages_per_second, burst_count)"
            " VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " messages_per_second = excluded.messages_per_second,"
            " burst_count = excluded.burst_count",
            user_id,
            messages_per_second,
            burst_count,
        )

    async def delete_rate_limit_override(self, user_id: str) -> None:
        await self._db.execute("DELETE FROM ratelimit_override WHERE user_id = ?", user_id)
