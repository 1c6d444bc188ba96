"""Fixtures for storage tests: every test that takes ``database`` runs on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starling.storage import Database
from tests.storage.dbfixtures import ENGINES, fresh_database_url, make_test_database


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
