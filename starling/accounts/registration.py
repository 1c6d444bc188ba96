"""Creating local accounts: the checks every registration path shares.

Used by `starling register-user`, the client /register endpoint and the admin
shared-secret registration, so the user ID rules live in one place.
"""

from __future__ import annotations

import re

from starling.accounts.passwords import PasswordHasher
from starling.config import PasswordPolicy
from starling.errors import MatrixError
from starling.storage.accounts import AccountStore, UserExists

# Spec (Appendices > User Identifiers): new localparts use a-z 0-9 . _ = - / +
_LOCALPART_RE = re.compile(r"[a-z0-9._=\-/+]+", re.ASCII)
MAX_USER_ID_BYTES = 255
MAX_PASSWORD_LENGTH = 512


def local_user_id(server_name: str, user: str) -> str:
    """Full user ID for a localpart or a `@local:server` ID; M_INVALID_USERNAME if bad."""
    if user.startswith("@"):
        local, sep, server = user[1:].partition(":")
        if not sep or server != server_name:
            raise MatrixError(
                400, "M_INVALID_USERNAME", f"User ID must be on this server ({server_name})"
            )
    else:
        local = user
    if not local:
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID localpart must not be empty")
    if not _LOCALPART_RE.fullmatch(local):
        raise MatrixError(
            400,
            "M_INVALID_USERNAME",
            "User ID may only contain a-z, 0-9, and the characters . _ = - / +",
        )
    user_id = f"@{local}:{server_name}"
    if len(user_id.encode()) > MAX_USER_ID_BYTES:
        raise MatrixError(400, "M_INVALID_USERNAME", "User ID is longer than 255 bytes")
    return user_id


def check_password(password: str, policy: PasswordPolicy | None = None) -> None:
    """Any password: not empty, not too long; a user-chosen one also obeys `policy`
    (Synapse's password_config.policy, MSC2000's error codes)."""
    if not isinstance(password, str) or not password:
        raise MatrixError(400, "M_WEAK_PASSWORD", "Password must not be empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", "Password is too long")
    if policy is None or not policy.enabled:
        return
    if len(password) < policy.minimum_length:
        raise MatrixError(
            400,
            "M_PASSWORD_TOO_SHORT",
            f"The password must be at least {policy.minimum_length} characters long",
        )
    checks = [
        (
            policy.require_digit,
            any(c.isdigit() for c in password),
            "M_PASSWORD_NO_DIGIT",
            "a digit",
        ),
        (
            policy.require_symbol,
            any(not c.isalnum() for c in password),
            "M_PASSWORD_NO_SYMBOL",
            "a symbol",
        ),
        (
            policy.require_lowercase,
            any(c.islower() for c in password),
            "M_PASSWORD_NO_LOWERCASE",
            "a lowercase letter",
        ),
        (
            policy.require_uppercase,
            any(c.isupper() for c in password),
            "M_PASSWORD_NO_UPPERCASE",
            "an uppercase letter",
        ),
    ]
    for required, present, errcode, what in checks:
        if required and not present:
            raise MatrixError(400, errcode, f"The password must contain {what}")


async def register_local_user(
    store: AccountStore,
    hasher: PasswordHasher,
    server_name: str,
    user: str,
    password: str | None,
    *,
    admin: bool = False,
    is_guest: bool = False,
    password_hash: str | None = None,
) -> str:
    """Create the account; M_USER_IN_USE if it exists. Returns the user ID. The password
    may be given already hashed (`password_hash`, from an earlier request)."""
    user_id = local_user_id(server_name, user)
    if password is not None:
        check_password(password)
        password_hash = await hasher.hash(password)
    try:
        await store.create_user(user_id, password_hash, admin=admin, is_guest=is_guest)
    except UserExists:
        raise MatrixError(400, "M_USER_IN_USE", f"User ID {user_id} is already taken") from None
    return user_id
