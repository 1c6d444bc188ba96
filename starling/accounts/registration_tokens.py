"""Registration tokens as the admin manages them (Synapse's admin API): list, create
(named, or generated with retries until unused), read, update and delete.

What a token allows at registration (the `m.login.registration_token` stage) is
`starling.accounts.service`'s business.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from starling.errors import MatrixError, invalid_param, not_found
from starling.storage.accounts import UNSET as UNSET
from starling.storage.accounts import AccountStore, RegistrationTokenExists
from starling.storage.accounts import RegistrationToken as RegistrationToken

TOKEN_CHARS = string.ascii_letters + string.digits + "._~-"
# Generated tokens that collide with existing ones are drawn again this many times.
GENERATE_ATTEMPTS = 10


class RegistrationTokens:
    def __init__(self, store: AccountStore) -> None:
        self._store = store

    async def list(self, valid: bool | None) -> list[RegistrationToken]:
        return await self._store.list_registration_tokens(valid)

    async def get(self, token: str) -> RegistrationToken | None:
        return await self._store.get_registration_token(token)

    async def create(
        self,
        token: str | None,
        length: int,
        uses_allowed: int | None,
        expiry_time: int | None,
    ) -> RegistrationToken:
        """`token` if given (400 if it exists), else a fresh one of `length` characters."""
        if token is not None:
            try:
                await self._store.create_registration_token(token, uses_allowed, expiry_time)
            except RegistrationTokenExists:
                raise invalid_param(f"Token already exists: {token}") from None
        else:
            for _ in range(GENERATE_ATTEMPTS):
                token = "".join(secrets.choice(TOKEN_CHARS) for _ in range(length))
                try:
                    await self._store.create_registration_token(token, uses_allowed, expiry_time)
                    break
                except RegistrationTokenExists:
                    continue
            else:
                raise MatrixError(500, "M_UNKNOWN", "Could not generate a unique token")
        created = await self._store.get_registration_token(token)
        if created is None:
            raise not_found("Registration token was deleted")
        return created

    async def update(self, token: str, **changes: Any) -> RegistrationToken | None:
        """Change `uses_allowed` / `expiry_time` (given as UNSET to keep them)."""
        return await self._store.update_registration_token(token, **changes)

    async def delete(self, token: str) -> bool:
        return await self._store.delete_registration_token(token)
