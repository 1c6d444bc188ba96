"""Shared fixtures: every test that takes `engine`, `database` or `hs` runs on SQLite and
on PostgreSQL (DESIGN §8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from starling.storage import Database
from tests.support.dbfixtures import ENGINES, fresh_database_url, make_test_database
from tests.support.harness import Harness, make_harness


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: "sqlite" or "postgres"."""
    engine_name: str = request.param
    return engine_name


@pytest.fixture
async def database(engine: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh migrated database, once per engine."""
    async with make_test_database(engine, tmp_path) as db:
        yield db


@pytest.fixture
async def database_url(engine: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL for a fresh empty database, once per engine (for open/close/reopen tests)."""
    async with fresh_database_url(engine, tmp_path) as url:
        yield url


@pytest.fixture
def hs_config() -> dict[str, Any]:
    """Config overrides for `hs`; a test folder's conftest overrides this fixture."""
    return {}


@pytest.fixture
async def hs(
    database: Database, tmp_path: Path, hs_config: dict[str, Any]
) -> AsyncIterator[Harness]:
    """A whole homeserver on a fresh database (both engines), served in-process."""
    async with make_harness(database, tmp_path, **hs_config) as harness:
        yield harness
