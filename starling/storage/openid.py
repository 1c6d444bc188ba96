"""OpenID tokens: who a token names and until when (only their SHA-256 is stored)."""

from __future__ import annotations

from starling.storage.database import Database


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, token_sha256: str, user_id: str, expires_ts: int) -> None:
        await self._db.execute(
            "INSERT INTO openid_tokens (token_sha256, user_id, expires_ts) VALUES (?, ?, ?)",
            token_sha256,
            user_id,
            expires_ts,
        )

    async def user_of(self, token_sha256: str, now_ms: int) -> str | None:
        """The user a token names, unless it has expired."""
        value = await self._db.fetch_val(
            "SELECT user_id FROM openid_tokens WHERE token_sha256 = ? AND expires_ts > ?",
            token_sha256,
            now_ms,
        )
        return None if value is None else str(value)

    async def delete_expired(self, now_ms: int) -> int:
        return await self._db.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", now_ms)
