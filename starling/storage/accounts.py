"""Accounts storage: users, devices, access tokens and registration tokens.

Narrow by design (DESIGN §4): the accounts service gets this and nothing else. Each method
is one round trip where the engines allow it; list arguments are sent as one array
parameter, never one query per item. Access tokens are stored as their sha256, never in
clear.

Policy (who may log in, what deactivation also removes) belongs to the accounts service;
this module only keeps the rows consistent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from starling.storage.database import Database, Row, Transaction


class UserExists(Exception):
    """The user ID is already registered."""


class RegistrationTokenExists(Exception):
    """The registration token already exists."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def hash_token(token: str) -> bytes:
    """How an access token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    user_id: str
    password_hash: str | None
    created_ts: int
    admin: bool
    deactivated: bool
    is_guest: bool
    appservice_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None = None


class TokenOwner(NamedTuple):
    """Who an access token belongs to: everything request authentication needs."""

    user_id: str
    device_id: str | None
    valid_until_ms: int | None
    is_admin: bool
    deactivated: bool


class TokenSession(NamedTuple):
    """A TokenOwner plus the guest flag and the refresh token the access token was issued
    with (None if it is not refreshable)."""

    user_id: str
    device_id: str | None
    valid_until_ms: int | None
    is_admin: bool
    deactivated: bool
    is_guest: bool
    refresh_token_id: int | None
    locked: bool = False
    shadow_banned: bool = False


class RefreshedSession(NamedTuple):
    """The outcome of rotating a refresh token."""

    user_id: str
    device_id: str
    revoked_refresh_ids: list[int]


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None


class _Unset:
    """Marks an argument that was not given (as opposed to given as None)."""


UNSET: Any = _Unset()

_USER_COLUMNS = "user_id, password_hash, created_ts, admin, deactivated, is_guest, appservice_id"
_DEVICE_COLUMNS = "user_id, device_id, display_name, last_seen_ts, last_seen_ip"
_DEVICE_READ = _DEVICE_COLUMNS + ", last_seen_user_agent"
_REG_TOKEN_COLUMNS = "token, uses_allowed, pending, completed, expiry_time"
_REG_TOKEN_VALID = (
    "(uses_allowed IS NULL OR pending + completed < uses_allowed)"
    " AND (expiry_time IS NULL OR expiry_time > ?)"
)


def _user(row: Row) -> User:
    return User(
        user_id=row[0],
        password_hash=row[1],
        created_ts=row[2],
        admin=bool(row[3]),
        deactivated=bool(row[4]),
        is_guest=bool(row[5]),
        appservice_id=row[6],
    )


def _device(row: Row) -> Device:
    return Device(row[0], row[1], row[2], row[3], row[4], row[5])


def _registration_token(row: Row) -> RegistrationToken:
    return RegistrationToken(row[0], row[1], row[2], row[3], row[4])


class AccountStore:
    def __init__(self, db: Database, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._db = db
        self._clock_ms = clock_ms

    # -- users

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        *,
        admin: bool = False,
        is_guest: bool = False,
        appservice_id: str | None = None,
    ) -> None:
        """Register ``user_id``; raise :class:`UserExists` if it is taken."""
        inserted = await self._db.execute(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, FALSE, ?, ?)"
            " ON CONFLICT (user_id) DO NOTHING",
            user_id,
            password_hash,
            self._clock_ms(),
            admin,
            is_guest,
            appservice_id,
        )
        if not inserted:
            raise UserExists(user_id)

    async def guests_among(self, user_ids: Iterable[str]) -> set[str]:
        """Which of these users are guest accounts (one query)."""
        ids = list(user_ids)
        if not ids:
            return set()
        rows = await self._db.fetch_all(
            f"SELECT user_id FROM users WHERE is_guest AND {self._db.sql.in_array('user_id')}",
            self._db.sql.array(ids),
        )
        return {r[0] for r in rows}

    async def get_user(self, user_id: str) -> User | None:
        row = await self._db.fetch_one(
            f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", user_id
        )
        return None if row is None else _user(row)

    async def user_exists(self, user_id: str) -> bool:
        return (
            await self._db.fetch_one("SELECT 1 FROM users WHERE user_id = ?", user_id) is not None
        )

    async def is_locked(self, user_id: str) -> bool:
        """Whether an admin locked the account (Synapse's ``locked``)."""
        return bool(await self._db.fetch_val("SELECT locked FROM users WHERE user_id = ?", user_id))

    async def is_approved(self, user_id: str) -> bool:
        """False while the account waits for an admin (registration_requires_approval)."""
        value = await self._db.fetch_val("SELECT approved FROM users WHERE user_id = ?", user_id)
        return value is None or bool(value)

    async def set_approved(self, user_id: str, approved: bool) -> bool:
        return bool(
            await self._db.execute(
                "UPDATE users SET approved = ? WHERE user_id = ?", approved, user_id
            )
        )

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> bool:
        """Set (or with None, remove) the password; False if there is no such user."""
        return bool(
            await self._db.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", password_hash, user_id
            )
        )

    async def set_erased(self, user_id: str) -> None:
        """Mark the account erased (a deactivation with `erase`)."""
        await self._db.execute("UPDATE users SET erased = TRUE WHERE user_id = ?", user_id)

    async def erased_among(self, user_ids: list[str]) -> set[str]:
        """Which of these users are erased (one query)."""
        if not user_ids:
            return set()
        rows = await self._db.fetch_all(
            f"SELECT user_id FROM users WHERE erased AND {self._db.sql.in_array('user_id')}",
            self._db.sql.array(user_ids),
        )
        return {str(r[0]) for r in rows}

    async def upgrade_guest(self, user_id: str, password_hash: str | None) -> bool:
        """A guest account becomes a full one with this password; False unless it was a
        guest (already upgraded, or never one)."""
        return bool(
            await self._db.execute(
                "UPDATE users SET password_hash = ?, is_guest = FALSE"
                " WHERE user_id = ? AND is_guest",
                password_hash,
                user_id,
            )
        )

    async def set_admin(self, user_id: str, admin: bool) -> bool:
        return bool(
            await self._db.execute("UPDATE users SET admin = ? WHERE user_id = ?", admin, user_id)
        )

    async def deactivate(self, user_id: str) -> bool:
        """Mark the user deactivated and remove its password. Devices and tokens are the
        service's to remove (``delete_devices``, ``delete_all_tokens``)."""
        return bool(
            await self._db.execute(
                "UPDATE users SET deactivated = TRUE, password_hash = NULL WHERE user_id = ?",
                user_id,
            )
        )

    # -- devices

    async def upsert_device(
        self,
        user_id: str,
        device_id: str,
        initial_display_name: str | None = None,
        *,
        last_seen_ts: int | None = None,
        last_seen_ip: str | None = None,
    ) -> bool:
        """Create the device if it does not exist (returning True); otherwise keep its
        display name (the spec ignores ``initial_device_display_name`` for a known device)
        and only update ``last_seen_*`` if given."""
        async with self._db.transaction() as txn:
            created = await txn.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO NOTHING",
                user_id,
                device_id,
                initial_display_name,
                last_seen_ts,
                last_seen_ip,
            )
            if not created and (last_seen_ts is not None or last_seen_ip is not None):
                await txn.execute(
                    "UPDATE devices SET last_seen_ts = COALESCE(?, last_seen_ts),"
                    " last_seen_ip = COALESCE(?, last_seen_ip)"
                    " WHERE user_id = ? AND device_id = ?",
                    last_seen_ts,
                    last_seen_ip,
                    user_id,
                    device_id,
                )
        return bool(created)

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self._db.fetch_one(
            f"SELECT {_DEVICE_READ} FROM devices WHERE user_id = ? AND device_id = ?",
            user_id,
            device_id,
        )
        return None if row is None else _device(row)

    async def list_devices(self, user_id: str) -> list[Device]:
        rows = await self._db.fetch_all(
            f"SELECT {_DEVICE_READ} FROM devices WHERE user_id = ? ORDER BY device_id",
            user_id,
        )
        return [_device(row) for row in rows]

    async def update_device_display_name(
        self, user_id: str, device_id: str, display_name: str | None
    ) -> bool:
        """False if there is no such device."""
        return bool(
            await self._db.execute(
                "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                display_name,
                user_id,
                device_id,
            )
        )

    async def update_devices_last_seen(
        self, seen: Iterable[tuple[str, str, int, str | None, str | None]]
    ) -> None:
        """Batch update from ``(user_id, device_id, last_seen_ts, last_seen_ip,
        user_agent)`` tuples — for a periodic flush of the client-IP tracker, not one
        write per request. A sighting older than the stored one is dropped: with workers
        each process flushes its own, and a late flush must not put an older one back."""
        rows = [(ts, ip, ua, user_id, device_id, ts) for user_id, device_id, ts, ip, ua in seen]
        if not rows:
            return
        async with self._db.transaction() as txn:
            await txn.executemany(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
                " WHERE user_id = ? AND device_id = ?"
                " AND (last_seen_ts IS NULL OR last_seen_ts <= ?)",
                rows,
            )

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> int:
        """Delete these devices of ``user_id`` and (by cascade) their access tokens; return
        how many devices were deleted."""
        if not device_ids:
            return 0
        sql = self._db.sql
        return await self._db.execute(
            f"DELETE FROM devices WHERE user_id = ? AND {sql.in_array('device_id')}",
            user_id,
            sql.array(device_ids),
        )

    # -- access tokens

    async def add_access_token(
        self,
        token: str,
        user_id: str,
        device_id: str | None,
        valid_until_ms: int | None = None,
        *,
        refresh_token_id: int | None = None,
    ) -> None:
        """Store a new access token (hashed). The device, if any, must already exist."""
        await self._db.execute(
            "INSERT INTO access_tokens"
            " (token_hash, user_id, device_id, created_ts, valid_until_ms, refresh_token_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            hash_token(token),
            user_id,
            device_id,
            self._clock_ms(),
            valid_until_ms,
            refresh_token_id,
        )

    async def get_by_access_token(self, token: str) -> TokenOwner | None:
        """The token's user, device, expiry and the user's admin/deactivated flags; None if
        the token is unknown. Expiry is the caller's to check (soft-logout needs it)."""
        found = await self.get_token_session(token)
        return None if found is None else TokenOwner(*found[:5])

    async def get_token_session(self, token: str) -> TokenSession | None:
        """Like :meth:`get_by_access_token`, with ``is_guest`` and ``refresh_token_id``."""
        row = await self._db.fetch_one(
            "SELECT t.user_id, t.device_id, t.valid_until_ms, u.admin, u.deactivated,"
            " u.is_guest, t.refresh_token_id, u.locked, u.shadow_banned"
            " FROM access_tokens AS t JOIN users AS u ON u.user_id = t.user_id"
            " WHERE t.token_hash = ?",
            hash_token(token),
        )
        if row is None:
            return None
        return TokenSession(
            row[0],
            row[1],
            row[2],
            bool(row[3]),
            bool(row[4]),
            bool(row[5]),
            row[6],
            bool(row[7]),
            bool(row[8]),
        )

    async def delete_access_token(self, token: str) -> bool:
        return bool(
            await self._db.execute(
                "DELETE FROM access_tokens WHERE token_hash = ?", hash_token(token)
            )
        )

    async def delete_all_tokens(self, user_id: str, except_device: str | None = None) -> int:
        """Delete every access token of ``user_id``, except those of ``except_device``."""
        if except_device is None:
            return await self._db.execute("DELETE FROM access_tokens WHERE user_id = ?", user_id)
        return await self._db.execute(
            "DELETE FROM access_tokens WHERE user_id = ? AND (device_id IS NULL OR device_id <> ?)",
            user_id,
            except_device,
        )

    async def delete_device_tokens(self, user_id: str, device_id: str) -> None:
        """Delete the access and refresh tokens of one device, keeping the device."""
        async with self._db.transaction() as txn:
            await txn.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
            await txn.execute(
                "DELETE FROM refresh_tokens WHERE user_id = ? AND device_id = ?",
                user_id,
                device_id,
            )

    async def delete_tokens_except(self, user_id: str, keep_token: str) -> None:
        """Delete every access and refresh token of ``user_id`` but ``keep_token`` (and the
        refresh token it was issued with), and the pushers the deleted tokens registered."""
        keep = hash_token(keep_token)
        async with self._db.transaction() as txn:
            keep_refresh = await txn.fetch_val(
                "SELECT refresh_token_id FROM access_tokens WHERE token_hash = ?", keep
            )
            await txn.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND token_hash <> ?", user_id, keep
            )
            # Pushers registered through the tokens that go (as Synapse on a password
            # change): the other sessions no longer receive this account's notifications.
            await txn.execute(
                "DELETE FROM pushers WHERE user_id = ? AND access_token_hash IS NOT NULL"
                " AND access_token_hash <> ?",
                user_id,
                keep,
            )
            await txn.execute(
                "DELETE FROM refresh_tokens WHERE user_id = ? AND id <> ?",
                user_id,
                -1 if keep_refresh is None else keep_refresh,
            )

    # -- refresh tokens

    async def add_refreshable_access_token(
        self,
        access_token: str,
        refresh_token: str,
        user_id: str,
        device_id: str,
        valid_until_ms: int,
    ) -> int:
        """Store a new refresh token and the expiring access token issued with it; return
        the refresh token's id."""
        async with self._db.transaction() as txn:
            return await self._insert_refresh_pair(
                txn, access_token, refresh_token, user_id, device_id, valid_until_ms
            )

    async def _insert_refresh_pair(
        self,
        txn: Transaction,
        access_token: str,
        refresh_token: str,
        user_id: str,
        device_id: str,
        valid_until_ms: int,
    ) -> int:
        now = self._clock_ms()
        refresh_id: int = await txn.fetch_val(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            hash_token(refresh_token),
            user_id,
            device_id,
            now,
        )
        await txn.execute(
            "INSERT INTO access_tokens"
            " (token_hash, user_id, device_id, created_ts, valid_until_ms, refresh_token_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            hash_token(access_token),
            user_id,
            device_id,
            now,
            valid_until_ms,
            refresh_id,
        )
        return refresh_id

    async def rotate_refresh_token(
        self,
        old_refresh_token: str,
        new_access_token: str,
        new_refresh_token: str,
        valid_until_ms: int,
    ) -> RefreshedSession | None:
        """Exchange a refresh token for a new pair; None if the token is unknown (or was
        revoked). Using a token revokes its predecessor and any successor it had been
        exchanged for before (a retried refresh), with their access tokens."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "SELECT id, user_id, device_id, next_token_id FROM refresh_tokens"
                f" WHERE token_hash = ?{txn.sql.for_update}",
                hash_token(old_refresh_token),
            )
            if row is None:
                return None
            old_id, user_id, device_id, stale_next = row[0], row[1], row[2], row[3]
            predecessors = await txn.fetch_all(
                "SELECT id FROM refresh_tokens WHERE next_token_id = ?", old_id
            )
            revoked = [r[0] for r in predecessors]
            if stale_next is not None:
                revoked.append(stale_next)
            await self._revoke_refresh_ids(txn, revoked)
            new_id = await self._insert_refresh_pair(
                txn, new_access_token, new_refresh_token, user_id, device_id, valid_until_ms
            )
            await txn.execute(
                "UPDATE refresh_tokens SET next_token_id = ? WHERE id = ?", new_id, old_id
            )
        return RefreshedSession(user_id, device_id, revoked)

    async def revoke_refresh_predecessors(self, refresh_token_id: int) -> list[int]:
        """The successor ``refresh_token_id`` has been used: delete the refresh tokens it
        replaced, with their access tokens. Returns the ids deleted (usually none)."""
        found = await self._db.fetch_all(
            "SELECT id FROM refresh_tokens WHERE next_token_id = ?", refresh_token_id
        )
        if not found:
            return []
        ids = [r[0] for r in found]
        async with self._db.transaction() as txn:
            await self._revoke_refresh_ids(txn, ids)
        return ids

    @staticmethod
    async def _revoke_refresh_ids(txn: Transaction, ids: Sequence[int]) -> None:
        if not ids:
            return
        sql = txn.sql
        await txn.execute(
            f"DELETE FROM access_tokens WHERE {sql.in_array('refresh_token_id')}", sql.array(ids)
        )
        await txn.execute(f"DELETE FROM refresh_tokens WHERE {sql.in_array('id')}", sql.array(ids))

    # -- registration tokens

    async def create_registration_token(
        self, token: str, uses_allowed: int | None = None, expiry_time: int | None = None
    ) -> None:
        """Raise :class:`RegistrationTokenExists` if ``token`` exists."""
        inserted = await self._db.execute(
            "INSERT INTO registration_tokens (token, uses_allowed, expiry_time) VALUES (?, ?, ?)"
            " ON CONFLICT (token) DO NOTHING",
            token,
            uses_allowed,
            expiry_time,
        )
        if not inserted:
            raise RegistrationTokenExists(token)

    async def get_registration_token(self, token: str) -> RegistrationToken | None:
        row = await self._db.fetch_one(
            f"SELECT {_REG_TOKEN_COLUMNS} FROM registration_tokens WHERE token = ?", token
        )
        return None if row is None else _registration_token(row)

    async def list_registration_tokens(self, valid: bool | None = None) -> list[RegistrationToken]:
        """All tokens, or only the (in)valid ones: valid = uses left and not expired."""
        if valid is None:
            rows = await self._db.fetch_all(
                f"SELECT {_REG_TOKEN_COLUMNS} FROM registration_tokens ORDER BY token"
            )
        else:
            condition = _REG_TOKEN_VALID if valid else f"NOT ({_REG_TOKEN_VALID})"
            rows = await self._db.fetch_all(
                f"SELECT {_REG_TOKEN_COLUMNS} FROM registration_tokens"
                f" WHERE {condition} ORDER BY token",
                self._clock_ms(),
            )
        return [_registration_token(row) for row in rows]

    async def update_registration_token(
        self, token: str, *, uses_allowed: int | None = UNSET, expiry_time: int | None = UNSET
    ) -> RegistrationToken | None:
        """Change the given fields (None clears a limit); return the token as it now is,
        or None if there is no such token."""
        changes = {
            column: value
            for column, value in (("uses_allowed", uses_allowed), ("expiry_time", expiry_time))
            if value is not UNSET
        }
        if not changes:
            return await self.get_registration_token(token)
        assignments = ", ".join(f"{column} = ?" for column in changes)
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                f"UPDATE registration_tokens SET {assignments} WHERE token = ?"
                f" RETURNING {_REG_TOKEN_COLUMNS}",
                *changes.values(),
                token,
            )
        return None if row is None else _registration_token(row)

    async def delete_registration_token(self, token: str) -> bool:
        return bool(
            await self._db.execute("DELETE FROM registration_tokens WHERE token = ?", token)
        )

    async def use_registration_token(self, token: str) -> bool:
        """Atomically count one completed registration if the token is valid (uses left,
        not expired); False (and nothing changed) otherwise."""
        return bool(
            await self._db.execute(
                "UPDATE registration_tokens SET completed = completed + 1"
                f" WHERE token = ? AND {_REG_TOKEN_VALID}",
                token,
                self._clock_ms(),
            )
        )

    async def reserve_registration_token(self, token: str) -> bool:
        """Atomically hold one use for a registration in progress (``pending + 1``) if the
        token is valid. Follow with :meth:`complete_registration_token` or
        :meth:`release_registration_token`."""
        return bool(
            await self._db.execute(
                "UPDATE registration_tokens SET pending = pending + 1"
                f" WHERE token = ? AND {_REG_TOKEN_VALID}",
                token,
                self._clock_ms(),
            )
        )

    async def complete_registration_token(self, token: str) -> bool:
        """Turn one pending use into a completed one."""
        return bool(
            await self._db.execute(
                "UPDATE registration_tokens SET pending = pending - 1, completed = completed + 1"
                " WHERE token = ? AND pending > 0",
                token,
            )
        )

    async def release_registration_token(self, token: str) -> bool:
        """Give back a pending use (the registration was abandoned)."""
        return bool(
            await self._db.execute(
                "UPDATE registration_tokens SET pending = pending - 1"
                " WHERE token = ? AND pending > 0",
                token,
            )
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UIAuthSession:
    session_id: str
    created_ts: int
    uri: str
    method: str
    user_id: str | None
    registration_token: str | None
    completed: frozenset[str]


class _Abandon(Exception):
    """Rolls a transaction back from inside."""


class UIAuthStore:
    """User-interactive auth sessions: what each authorises and the stages completed.

    A registration token used in a session holds one ``pending`` use of that token until
    the session is claimed (the caller then completes or releases the use) or expires
    (the use is released here)."""

    def __init__(self, db: Database, *, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._db = db
        self._clock_ms = clock_ms

    async def create_session(
        self, session_id: str, uri: str, method: str, user_id: str | None
    ) -> None:
        await self._db.execute(
            "INSERT INTO ui_auth_sessions (session_id, created_ts, uri, method, user_id)"
            " VALUES (?, ?, ?, ?, ?)",
            session_id,
            self._clock_ms(),
            uri,
            method,
            user_id,
        )

    async def get_session(self, session_id: str) -> UIAuthSession | None:
        rows = await self._db.fetch_all(
            "SELECT s.created_ts, s.uri, s.method, s.user_id, s.registration_token, c.stage_type"
            " FROM ui_auth_sessions AS s"
            " LEFT JOIN ui_auth_stages AS c ON c.session_id = s.session_id"
            " WHERE s.session_id = ?",
            session_id,
        )
        if not rows:
            return None
        first = rows[0]
        stages = frozenset(r[5] for r in rows if r[5] is not None)
        return UIAuthSession(session_id, first[0], first[1], first[2], first[3], first[4], stages)

    async def mark_stage_completed(self, session_id: str, stage_type: str) -> bool:
        """False if the session no longer exists."""
        async with self._db.transaction() as txn:
            exists = await txn.fetch_val(
                f"SELECT 1 FROM ui_auth_sessions WHERE session_id = ?{txn.sql.for_update}",
                session_id,
            )
            if exists is None:
                return False
            await txn.execute(
                "INSERT INTO ui_auth_stages (session_id, stage_type) VALUES (?, ?)"
                " ON CONFLICT (session_id, stage_type) DO NOTHING",
                session_id,
                stage_type,
            )
        return True

    async def reserve_registration_token(self, session_id: str, token: str, valid_at: int) -> bool:
        """Hold one use of ``token`` for this session (``pending + 1``) if the token is
        valid at ``valid_at`` and the session holds none yet; False otherwise."""
        try:
            async with self._db.transaction() as txn:
                claimed = await txn.execute(
                    "UPDATE ui_auth_sessions SET registration_token = ?"
                    " WHERE session_id = ? AND registration_token IS NULL",
                    token,
                    session_id,
                )
                if not claimed:
                    return False
                reserved = await txn.execute(
                    "UPDATE registration_tokens SET pending = pending + 1"
                    f" WHERE token = ? AND {_REG_TOKEN_VALID}",
                    token,
                    valid_at,
                )
                if not reserved:
                    raise _Abandon
        except _Abandon:
            return False
        return True

    async def claim_session(self, session_id: str) -> tuple[bool, str | None]:
        """Delete the session, so that it authorises one operation only. Returns whether
        it existed and the registration token whose pending use now belongs to the
        caller (to complete or release)."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "DELETE FROM ui_auth_sessions WHERE session_id = ? RETURNING registration_token",
                session_id,
            )
        return (row is not None, None if row is None else row[0])

    async def keep_claimed(self, session_id: str) -> tuple[bool, str | None]:
        """Like `claim_session`, but the session stays (marked claimed, so it authorises
        nothing more) for `set_result`: a registration retried with it is answered with
        the account it made. False if it does not exist or was already claimed."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "UPDATE ui_auth_sessions SET claimed = TRUE"
                " WHERE session_id = ? AND NOT claimed RETURNING registration_token",
                session_id,
            )
        return (row is not None, None if row is None else row[0])

    async def unclaim(self, session_id: str) -> None:
        """The claimed operation failed: the session may be used again."""
        await self._db.execute(
            "UPDATE ui_auth_sessions SET claimed = FALSE, registration_token = NULL"
            " WHERE session_id = ? AND result_user_id IS NULL",
            session_id,
        )

    async def set_result(self, session_id: str, user_id: str) -> None:
        await self._db.execute(
            "UPDATE ui_auth_sessions SET result_user_id = ? WHERE session_id = ?",
            user_id,
            session_id,
        )

    async def set_params(self, session_id: str, params: dict[str, Any]) -> None:
        """Remember a request's parameters for the session (first ones win)."""
        await self._db.execute(
            "UPDATE ui_auth_sessions SET params = ? WHERE session_id = ? AND params IS NULL",
            orjson.dumps(params).decode(),
            session_id,
        )

    async def get_session_state(
        self, session_id: str
    ) -> tuple[int, dict[str, Any] | None, bool, str | None] | None:
        """(created_ts, remembered params, claimed, registered user) of a session."""
        row = await self._db.fetch_one(
            "SELECT created_ts, params, claimed, result_user_id FROM ui_auth_sessions"
            " WHERE session_id = ?",
            session_id,
        )
        if row is None:
            return None
        params = orjson.loads(row[1]) if row[1] is not None else None
        return int(row[0]), params if isinstance(params, dict) else None, bool(row[2]), row[3]

    async def delete_expired(self, created_before_ms: int) -> int:
        """Delete sessions created before the cutoff, releasing their token uses."""
        async with self._db.transaction() as txn:
            rows = await txn.fetch_all(
                "DELETE FROM ui_auth_sessions WHERE created_ts < ? RETURNING registration_token",
                created_before_ms,
            )
            tokens = [(r[0],) for r in rows if r[0] is not None]
            if tokens:
                await txn.executemany(
                    "UPDATE registration_tokens SET pending = pending - 1"
                    " WHERE token = ? AND pending > 0",
                    tokens,
                )
        return len(rows)
