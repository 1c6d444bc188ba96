"""Test databases on both engines, for every storage and integration test (DESIGN §8).

Written to be lifted into ``tests/conftest.py`` as is: nothing here depends on the storage
tests. ``make_test_database(engine, tmp_path)`` opens a fresh, migrated database and
removes it afterwards; on PostgreSQL each one is a new ``starling_test_<random>`` database
on the server named by ``$STARLING_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards.

If PostgreSQL cannot be reached, its half of the tests is skipped with the reason — unless
``$CI`` is set, where that is a failure: CI must run both engines.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from starling.storage import Database, DatabaseConfig, open_database
from starling.storage.postgres import PostgresDatabase, create_database, drop_database

ENGINES = ("sqlite", "postgres")
POSTGRES_ENV = "STARLING_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

_postgres_unreachable: str | None = None  # why, once a connection attempt has failed


def postgres_admin_dsn() -> str:
    return os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES


def _postgres_unavailable(reason: str) -> None:
    message = f"PostgreSQL at {postgres_admin_dsn()} (${POSTGRES_ENV}) is unreachable: {reason}"
    if os.environ.get("CI"):
        raise RuntimeError(message + " — CI runs every storage test on both engines")
    pytest.skip(message)


@asynccontextmanager
async def fresh_database_url(engine: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL for a fresh, empty database on ``engine``, deleted on exit. For tests that
    open and reopen the same database."""
    global _postgres_unreachable
    if engine == "sqlite":
        yield str(tmp_path / "starling.db")
        return
    if engine != "postgres":
        raise ValueError(f"unknown engine {engine!r}")
    if _postgres_unreachable is not None:
        _postgres_unavailable(_postgres_unreachable)
    admin = postgres_admin_dsn()
    name = f"starling_test_{secrets.token_hex(6)}"
    try:
        url = await create_database(admin, name)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        _postgres_unreachable = f"{type(e).__name__}: {e}"
        _postgres_unavailable(_postgres_unreachable)
    try:
        yield url
    finally:
        await drop_database(admin, name)


@asynccontextmanager
async def make_test_database(
    engine: str, tmp_path: Path, *, migrate: bool = True
) -> AsyncIterator[Database]:
    """A fresh database on ``engine`` ("sqlite" or "postgres"), migrated unless
    ``migrate=False``, closed and deleted on exit."""
    async with fresh_database_url(engine, tmp_path) as url:
        db = await open_database(small_pool_config(url), migrate=migrate)
        if isinstance(db, PostgresDatabase):
            # A pooled statement from inside a transaction can exhaust the pool (#20).
            db.pool_in_transaction = "warn"
        try:
            yield db
        finally:
            await db.close()


def small_pool_config(url: str) -> DatabaseConfig:
    """Small pools: the test machines are shared."""
    return DatabaseConfig(url=url, pool_min_size=1, pool_max_size=5, sqlite_readers=2)
