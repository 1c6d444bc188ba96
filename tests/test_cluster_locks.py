"""ClusterKeyedLock (starling/locks.py): one holder per key across processes. Two
database pools on one PostgreSQL stand for two processes (tests/cluster runs the real
processes). PostgreSQL only: several processes on SQLite are refused by the config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starling.locks import ClusterKeyedLock
from starling.storage import open_database
from starling.storage.postgres import PostgresDatabase
from tests.support.dbfixtures import fresh_database_url, small_pool_config

CLASS = 0x54455354


@pytest.fixture
async def two_locks(
    tmp_path: Path,
) -> AsyncIterator[tuple[ClusterKeyedLock[tuple[str, ...]], ClusterKeyedLock[tuple[str, ...]]]]:
    async with fresh_database_url("postgres", tmp_path) as url:
        first = await open_database(small_pool_config(url))
        second = await open_database(small_pool_config(url), migrate=False)
        assert isinstance(first, PostgresDatabase) and isinstance(second, PostgresDatabase)
        a: ClusterKeyedLock[tuple[str, ...]] = ClusterKeyedLock(CLASS, "\0".join)
        b: ClusterKeyedLock[tuple[str, ...]] = ClusterKeyedLock(CLASS, "\0".join)
        await a.use_cluster(first.session_locks)
        await b.use_cluster(second.session_locks)
        try:
            yield a, b
        finally:
            await a.close()
            await b.close()
            await second.close()
            await first.close()


async def test_a_key_held_in_one_process_waits_in_the_other(
    two_locks: tuple[ClusterKeyedLock[tuple[str, ...]], ClusterKeyedLock[tuple[str, ...]]],
) -> None:
    a, b = two_locks
    order: list[str] = []
    async with a(("hash", "abc")):
        waiting = asyncio.ensure_future(_hold(b, ("hash", "abc"), order, "b"))
        # Another key is not held up.
        async with b(("hash", "def")):
            order.append("b-other")
        await asyncio.sleep(0.2)
        assert not waiting.done()
        order.append("a")
    await asyncio.wait_for(waiting, 5)
    assert order == ["b-other", "a", "b"]
    # Released: the first process takes it again at once.
    async with a(("hash", "abc")):
        pass


async def _hold(
    locks: ClusterKeyedLock[tuple[str, ...]], key: tuple[str, ...], order: list[str], tag: str
) -> None:
    async with locks(key):
        order.append(tag)
