"""Email validation sessions (accounts/email.py) and adding a validated address to an
account (user_threepids, which login by address reads)."""

from __future__ import annotations

from dataclasses import dataclass

from starling.storage.database import Database


@dataclass(frozen=True, slots=True)
class ValidationSession:
    session_id: str
    medium: str
    address: str
    client_secret: str
    last_send_attempt: int
    token_hash: str
    created_ts: int
    validated_at: int | None


_COLUMNS = (
    "session_id, medium, address, client_secret, last_send_attempt, token_hash, created_ts,"
    " validated_at"
)


def _session(row: tuple[object, ...]) -> ValidationSession:
    return ValidationSession(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        int(row[4]),  # type: ignore[call-overload]
        str(row[5]),
        int(row[6]),  # type: ignore[call-overload]
        None if row[7] is None else int(row[7]),  # type: ignore[call-overload]
    )


class ThreepidValidationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def find(self, client_secret: str, medium: str, address: str) -> ValidationSession | None:
        """The newest session of this client secret for this address."""
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM threepid_validation_sessions"
            " WHERE client_secret = ? AND medium = ? AND address = ?"
            " ORDER BY created_ts DESC LIMIT 1",
            client_secret,
            medium,
            address,
        )
        return None if row is None else _session(tuple(row))

    async def get(self, session_id: str) -> ValidationSession | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM threepid_validation_sessions WHERE session_id = ?",
            session_id,
        )
        return None if row is None else _session(tuple(row))

    async def create(self, session: ValidationSession) -> None:
        await self._db.execute(
            f"INSERT INTO threepid_validation_sessions ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            session.session_id,
            session.medium,
            session.address,
            session.client_secret,
            session.last_send_attempt,
            session.token_hash,
            session.created_ts,
            session.validated_at,
        )

    async def resend(self, session_id: str, send_attempt: int, token_hash: str) -> None:
        await self._db.execute(
            "UPDATE threepid_validation_sessions SET last_send_attempt = ?, token_hash = ?"
            " WHERE session_id = ?",
            send_attempt,
            token_hash,
            session_id,
        )

    async def mark_validated(self, session_id: str, now_ms: int) -> None:
        await self._db.execute(
            "UPDATE threepid_validation_sessions SET validated_at = ?"
            " WHERE session_id = ? AND validated_at IS NULL",
            now_ms,
            session_id,
        )

    async def attach_uia(self, session_id: str, uia_session: str) -> None:
        await self._db.execute(
            "UPDATE threepid_validation_sessions SET uia_session = ? WHERE session_id = ?",
            uia_session,
            session_id,
        )

    async def validated_for_uia(self, uia_session: str) -> list[tuple[str, str]]:
        rows = await self._db.fetch_all(
            "SELECT medium, address FROM threepid_validation_sessions"
            " WHERE uia_session = ? AND validated_at IS NOT NULL ORDER BY created_ts",
            uia_session,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def delete_older_than(self, created_before: int) -> None:
        await self._db.execute(
            "DELETE FROM threepid_validation_sessions WHERE created_ts < ?", created_before
        )

    async def address_owner(self, medium: str, address: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", medium, address
        )
        return None if value is None else str(value)

    async def add_to_account(
        self, user_id: str, medium: str, address: str, validated_at: int, now_ms: int
    ) -> bool:
        """Add the address to the account; False when another account holds it."""
        async with self._db.transaction() as txn:
            owner = await txn.fetch_val(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?",
                medium,
                address,
            )
            if owner is not None:
                return str(owner) == user_id
            await txn.execute(
                "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)"
                " VALUES (?, ?, ?, ?, ?)",
                user_id,
                medium,
                address,
                validated_at,
                now_ms,
            )
        return True
