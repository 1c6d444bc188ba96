"""Shared-secret registration (Synapse's admin API ``/_synapse/admin/v1/register``): single-
use expiring nonces and the HMAC-SHA1 check over
``nonce \\0 username \\0 password \\0 admin|notadmin [\\0 user_type]`` keyed with
``registration_shared_secret``, so tools like ``register_new_matrix_user`` work unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from starling.errors import MatrixError, forbidden

NONCE_LIFETIME_SECONDS = 60.0  # as Synapse
MAX_NONCES = 10_000
MAX_FIELD_LENGTH = 512


def registration_mac(
    secret: str, nonce: str, username: str, password: str, admin: bool, user_type: str | None
) -> str:
    """The hex HMAC-SHA1 a client must send for these registration details."""
    mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
    mac.update(nonce.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(username.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(password.encode("utf-8"))
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(user_type.encode("utf-8"))
    return mac.hexdigest()


class SharedSecretRegistration:
    def __init__(self, secret: str | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._secret = secret
        self._clock = clock
        self._nonces: dict[str, float] = {}

    def _require_enabled(self) -> str:
        if not self._secret:
            raise MatrixError(400, "M_UNKNOWN", "Shared secret registration is not enabled")
        return self._secret

    def new_nonce(self) -> str:
        self._require_enabled()
        now = self._clock()
        if len(self._nonces) >= MAX_NONCES:
            self._nonces = {n: t for n, t in self._nonces.items() if t > now}
            if len(self._nonces) >= MAX_NONCES:
                raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many outstanding nonces")
        nonce = secrets.token_hex(32)
        self._nonces[nonce] = now + NONCE_LIFETIME_SECONDS
        return nonce

    def discard_nonce(self, nonce: str) -> None:
        self._nonces.pop(nonce, None)

    def verify(
        self,
        nonce: str,
        username: str,
        password: str,
        admin: bool,
        user_type: str | None,
        mac: str,
    ) -> None:
        """Consume ``nonce`` (valid or not, it is spent) and check ``mac``."""
        secret = self._require_enabled()
        expires = self._nonces.pop(nonce, None)
        if expires is None or expires <= self._clock():
            raise MatrixError(400, "M_UNKNOWN", "Unrecognised nonce")
        for name, value in (("username", username), ("password", password)):
            if len(value) > MAX_FIELD_LENGTH or "\x00" in value:
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid {name}")
        want = registration_mac(secret, nonce, username, password, admin, user_type)
        if not hmac.compare_digest(want.encode(), mac.encode("utf-8", "replace")):
            raise forbidden("HMAC incorrect")
