"""OpenID tokens: a user proves who they are to a third party (an integration manager, a
widget) without handing over their access token.

The client asks for a token (POST /user/{userId}/openid/request_token); the third party
exchanges it at the user's server (GET /_matrix/federation/v1/openid/userinfo) for the
user ID. A token is good for an hour (`expires_in`, as Synapse), for that exchange only:
it is not an access token. Only its SHA-256 is stored; expired tokens are deleted as new
ones are handed out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from starling.errors import MatrixError, forbidden
from starling.storage.openid import OpenIdStore

TOKEN_LIFETIME_MS = 3600 * 1000
MAX_TOKEN_LENGTH = 1024


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def unknown_token() -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", "Access token unknown or expired")


class OpenIdTokens:
    def __init__(
        self,
        server_name: str,
        store: OpenIdStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def request_token(self, requester_user_id: str, user_id: str) -> dict[str, Any]:
        """POST /user/{userId}/openid/request_token: a new token for the requester."""
        if user_id != requester_user_id:
            raise forbidden("Cannot request OpenID tokens for other users")
        now = self._now_ms()
        await self._store.delete_expired(now)
        token = secrets.token_urlsafe(32)
        await self._store.insert(_digest(token), user_id, now + TOKEN_LIFETIME_MS)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self._server_name,
            "expires_in": TOKEN_LIFETIME_MS // 1000,
        }

    async def userinfo(self, token: str | None) -> dict[str, Any]:
        """GET /openid/userinfo: the user a valid token was handed to."""
        if not token:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise unknown_token()
        user_id = await self._store.user_of(_digest(token), self._now_ms())
        if user_id is None:
            raise unknown_token()
        return {"sub": user_id}
