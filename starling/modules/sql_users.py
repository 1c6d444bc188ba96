"""Login against an existing application's user table (a forum's, a CMS's), so its
people sign in to the messenger with the accounts they have:

    modules:
      - module: starling.modules.sql_users.SqlUserTableProvider
        config:
          dsn: "postgresql://matrix_ro@db.example.org/forum"   # or sqlite:////srv/app.db
          # One parameter, $1: the name the user typed (lower-cased local part). Columns
          # by name: id (the row's stable key: the identity), password_hash, and
          # optionally username (the localpart of a new account) and display_name.
          query: "SELECT id, username, password_hash, display_name FROM users
                  WHERE lower(username) = $1 AND NOT banned"
          hash_scheme: auto        # bcrypt | argon2 | auto (by the hash's prefix)
          provider_id: forum       # the identities' namespace (default "sql")
          timeout: 10              # seconds for connecting and for the query
          allow_existing_users: false

A ``m.login.password`` login is checked here before the local password database. The
query runs read-only (SQLite opens the file read-only; for PostgreSQL give the role only
SELECT) with the name as a bound parameter, never pasted into SQL. One row must match;
none, several or a hash of an unknown scheme refuse. The row's ``id`` is the identity:
renaming a user in the application keeps their Matrix account. A name with no row still
costs one bcrypt check, so timing does not tell which names exist. Passwords and the DSN
are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import argon2
import asyncpg
import bcrypt

from starling.accounts.external import ExternalIdentity
from starling.modules.api import ModuleApi

logger = logging.getLogger(__name__)

# A bcrypt hash of a random password: what a name with no row is checked against.
_DUMMY_BCRYPT = b"$2b$12$HSdqInZwr.Wj6nl.2BRJoOfITPS0DBIbPK7tqlXYaTtLNrP05oWi."
_argon2 = argon2.PasswordHasher()


def verify_hash(scheme: str, stored: str, password: str) -> bool:
    """Whether `password` matches `stored` (bcrypt $2a$/$2b$/$2y$ or argon2 $argon2...)."""
    if scheme == "auto":
        if re.match(r"^\$2[aby]\$", stored):
            scheme = "bcrypt"
        elif stored.startswith("$argon2"):
            scheme = "argon2"
        else:
            return False
    try:
        if scheme == "bcrypt":
            return bcrypt.checkpw(password.encode(), stored.encode())
        if scheme == "argon2":
            return _argon2.verify(stored, password)
    except (ValueError, argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    return False


@dataclass(frozen=True)
class SqlConfig:
    dsn: str
    query: str
    hash_scheme: str
    provider_id: str
    timeout: float
    allow_existing_users: bool

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> SqlConfig:
        known = {"dsn", "query", "hash_scheme", "provider_id", "timeout", "allow_existing_users"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        dsn = config.get("dsn")
        if not isinstance(dsn, str) or not dsn.startswith(
            ("postgresql://", "postgres://", "sqlite:///")
        ):
            raise ValueError("'dsn': postgresql://... or sqlite:///path")
        query = config.get("query")
        if not isinstance(query, str) or "$1" not in query or "$2" in query:
            raise ValueError("'query': a SELECT with one parameter, $1 (the user name)")
        if not query.lstrip().lower().startswith(("select", "with")):
            raise ValueError("'query': must be a SELECT")
        scheme = config.get("hash_scheme", "auto")
        if scheme not in ("auto", "bcrypt", "argon2"):
            raise ValueError("'hash_scheme': bcrypt, argon2 or auto")
        provider_id = config.get("provider_id", "sql")
        if not isinstance(provider_id, str) or not re.fullmatch(r"[a-z0-9_.-]{1,64}", provider_id):
            raise ValueError("'provider_id': 1-64 of a-z 0-9 _ . -")
        timeout = config.get("timeout", 10)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 120:
            raise ValueError("'timeout': seconds, more than 0 and at most 120")
        return cls(
            dsn, query, scheme, provider_id, float(timeout),
            bool(config.get("allow_existing_users", False)),
        )  # fmt: skip


class SqlUserTableProvider:
    """See the module docstring."""

    def __init__(self, config: Mapping[str, Any], api: ModuleApi) -> None:
        self.config = SqlConfig.parse(config)
        api.register_password_auth_provider_callbacks(
            auth_checkers={("m.login.password", ("password",)): self.check_password}
        )

    async def _rows(self, username: str) -> list[dict[str, Any]]:
        cfg = self.config
        if cfg.dsn.startswith("sqlite:///"):
            return await asyncio.to_thread(self._sqlite_rows, username)
        conn = await asyncpg.connect(cfg.dsn, timeout=cfg.timeout, command_timeout=cfg.timeout)
        try:
            async with conn.transaction(readonly=True):
                records = await conn.fetch(cfg.query, username, timeout=cfg.timeout)
        finally:
            await conn.close(timeout=cfg.timeout)
        return [dict(r) for r in records[:2]]

    def _sqlite_rows(self, username: str) -> list[dict[str, Any]]:
        path = self.config.dsn[len("sqlite:///") :]  # sqlite:////abs or sqlite:///relative
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.config.timeout)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(self.config.query, {"1": username}).fetchmany(2)]
        finally:
            conn.close()

    async def check_password(
        self, username: str, login_type: str, fields: Mapping[str, Any]
    ) -> ExternalIdentity | None:
        password = fields.get("password")
        if not isinstance(password, str) or not password or not username:
            return None
        try:
            rows = await self._rows(username)
        except (OSError, TimeoutError, asyncpg.PostgresError, sqlite3.Error) as e:
            logger.warning("user table of %s unavailable: %s", self.config.provider_id, type(e))
            return None
        row = rows[0] if len(rows) == 1 else None
        stored = row.get("password_hash") if row is not None else None
        if row is None or not isinstance(stored, str) or row.get("id") is None:
            await asyncio.to_thread(bcrypt.checkpw, password.encode(), _DUMMY_BCRYPT)
            return None
        if not await asyncio.to_thread(verify_hash, self.config.hash_scheme, stored, password):
            return None
        name = row.get("username")
        display = row.get("display_name")
        return ExternalIdentity(
            provider=self.config.provider_id,
            external_id=str(row["id"]),
            localpart=str(name) if name else username,
            display_name=str(display) if display else None,
            allow_existing_user=self.config.allow_existing_users,
        )
