"""PostgreSQL for tests: a fresh database per test, dropped afterwards.

`STARLING_TEST_POSTGRES` overrides the server DSN. When PostgreSQL cannot be reached the
test is skipped with the reason, except under CI (`CI` set), where that is a failure:
every storage and integration test must run on both engines there.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_dsn() -> str:
    return os.environ.get("STARLING_TEST_POSTGRES", DEFAULT_DSN)


def dsn_for(database: str) -> str:
    parts = urlsplit(server_dsn())
    return urlunsplit(parts._replace(path="/" + database))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(server_dsn(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def unreachable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI but unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable at {server_dsn()}: {reason}")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database, yield its DSN, drop it after (sync, for subprocess tests)."""
    name = f"starling_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        unreachable(str(e))
    try:
        yield dsn_for(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
