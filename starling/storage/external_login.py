"""External identities, login tokens, SSO sessions and modules' data (migration 0037)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from starling.storage.database import Database, UniqueViolation


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SsoSession:
    state: str
    idp_id: str
    nonce: str
    code_verifier: str
    client_redirect_url: str
    cookie_hash: str
    expires_ms: int


class ExternalLoginStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- external identities

    async def user_for_external_id(self, provider: str, external_id: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT user_id FROM user_external_ids WHERE auth_provider = ? AND external_id = ?",
            provider,
            external_id,
        )
        return str(value) if value is not None else None

    async def link_external_id(self, provider: str, external_id: str, user_id: str) -> bool:
        """False when the identity is already linked (to anyone)."""
        try:
            await self._db.execute(
                "INSERT INTO user_external_ids (auth_provider, external_id, user_id)"
                " VALUES (?, ?, ?)",
                provider,
                external_id,
                user_id,
            )
        except UniqueViolation:
            return False
        return True

    async def external_ids_of(self, user_id: str) -> list[tuple[str, str]]:
        rows = await self._db.fetch_all(
            "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = ?"
            " ORDER BY auth_provider, external_id",
            user_id,
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    # -- m.login.token

    async def add_login_token(
        self, token: str, user_id: str, provider: str, expires_ms: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO login_tokens (token_hash, user_id, auth_provider, expires_ms)"
            " VALUES (?, ?, ?, ?)",
            token_hash(token),
            user_id,
            provider,
            expires_ms,
        )

    async def consume_login_token(self, token: str, now_ms: int) -> str | None:
        """The token's user, once: the row is deleted whether or not it had expired."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "SELECT user_id, expires_ms FROM login_tokens WHERE token_hash = ?",
                token_hash(token),
            )
            if row is None:
                return None
            deleted = await txn.execute(
                "DELETE FROM login_tokens WHERE token_hash = ?", token_hash(token)
            )
            await txn.execute("DELETE FROM login_tokens WHERE expires_ms < ?", now_ms)
        if deleted != 1 or int(row[1]) < now_ms:
            return None
        return str(row[0])

    # -- SSO sessions

    async def add_sso_session(self, session: SsoSession, now_ms: int) -> None:
        async with self._db.transaction() as txn:
            await txn.execute("DELETE FROM sso_sessions WHERE expires_ms < ?", now_ms)
            await txn.execute(
                "INSERT INTO sso_sessions (state, idp_id, nonce, code_verifier,"
                " client_redirect_url, cookie_hash, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                session.state,
                session.idp_id,
                session.nonce,
                session.code_verifier,
                session.client_redirect_url,
                session.cookie_hash,
                session.expires_ms,
            )

    async def take_sso_session(self, state: str) -> SsoSession | None:
        """The session of `state`, removed: a state is good for one callback only."""
        async with self._db.transaction() as txn:
            row = await txn.fetch_one(
                "SELECT state, idp_id, nonce, code_verifier, client_redirect_url, cookie_hash,"
                " expires_ms FROM sso_sessions WHERE state = ?",
                state,
            )
            if row is None:
                return None
            if await txn.execute("DELETE FROM sso_sessions WHERE state = ?", state) != 1:
                return None
        return SsoSession(
            str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]),
            int(row[6]),
        )  # fmt: skip

    # -- modules' data

    async def get_module_data(self, module: str, key: str) -> str | None:
        value = await self._db.fetch_val(
            "SELECT value FROM module_data WHERE module = ? AND key = ?", module, key
        )
        return str(value) if value is not None else None

    async def put_module_data(self, module: str, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO module_data (module, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (module, key) DO UPDATE SET value = excluded.value",
            module,
            key,
            value,
        )

    async def delete_module_data(self, module: str, key: str) -> None:
        await self._db.execute("DELETE FROM module_data WHERE module = ? AND key = ?", module, key)
