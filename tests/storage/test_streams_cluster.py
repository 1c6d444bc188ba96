"""Stream positions with several writer processes (workers, issue 17): a position is
visible only once every lower one has finished, cluster-wide.

Two generators of one stream on two separate database pools stand for two processes; the
bus between them is a plain callback here (tests/cluster runs the real thing). PostgreSQL
only: several processes on SQLite are refused by the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starling.storage import Database, StorageError, StreamIdGenerator, open_database
from tests.support.dbfixtures import fresh_database_url, small_pool_config


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    async with fresh_database_url("postgres", tmp_path) as url:
        first = await open_database(small_pool_config(url))
        second = await open_database(small_pool_config(url), migrate=False)
        try:
            yield first, second
        finally:
            await second.close()
            await first.close()


async def _pair(
    db_a: Database, db_b: Database, name: str
) -> tuple[StreamIdGenerator, StreamIdGenerator]:
    a = await StreamIdGenerator.create(db_a, name)
    b = await StreamIdGenerator.create(db_b, name)
    # The "bus": each tells the other of its commits.
    await a.use_cluster(db_a, lambda _, previous, position: b.advance(previous, position))
    await b.use_cluster(db_b, lambda _, previous, position: a.advance(previous, position))
    return a, b


async def test_a_slow_write_in_one_process_holds_back_the_other(
    two_processes: tuple[Database, Database],
) -> None:
    db_a, db_b = two_processes
    a, b = await _pair(db_a, db_b, "events")
    allocated = asyncio.Event()
    release = asyncio.Event()

    async def slow_write_on_a() -> int:
        async with db_a.transaction() as txn:
            position = await a.next_id(txn)
            allocated.set()
            await release.wait()
            return position

    slow = asyncio.create_task(slow_write_on_a())
    await allocated.wait()
    # B's write waits for A's commit (allocation to commit is serialised per stream), so
    # it can never commit a later position while A's is unfinished.
    b_write_done = asyncio.Event()

    async def write_on_b() -> int:
        async with db_b.transaction() as txn:
            position = await b.next_id(txn)
        b_write_done.set()
        return position

    fast = asyncio.create_task(write_on_b())
    await asyncio.sleep(0.2)
    assert not b_write_done.is_set()
    assert a.current_position() == b.current_position() == 0
    release.set()
    first, second = await slow, await fast
    assert second > first
    assert a.current_position() == b.current_position() == second


async def test_a_crashed_writers_transaction_does_not_block_the_stream(
    two_processes: tuple[Database, Database],
) -> None:
    db_a, db_b = two_processes
    a, b = await _pair(db_a, db_b, "receipts")
    with pytest.raises(RuntimeError):
        async with db_a.transaction() as txn:
            await a.next_id(txn)
            raise RuntimeError("the process dies mid-write")
    async with db_b.transaction() as txn:
        position = await b.next_id(txn)
    assert a.current_position() == b.current_position() == position


async def test_a_process_starting_mid_write_does_not_see_the_unfinished_position(
    two_processes: tuple[Database, Database],
) -> None:
    db_a, db_b = two_processes
    a = await StreamIdGenerator.create(db_a, "to_device")
    await a.use_cluster(db_a, lambda *_: None)
    b = await StreamIdGenerator.create(db_b, "to_device")
    allocated = asyncio.Event()
    release = asyncio.Event()

    async def write() -> int:
        async with db_a.transaction() as txn:
            position = await a.next_id(txn)
            allocated.set()
            await release.wait()
            return position

    writing = asyncio.create_task(write())
    await allocated.wait()
    # B joins while A's write is in flight: the sequence has moved past what is committed.
    joining = asyncio.create_task(b.use_cluster(db_b, lambda *_: None))
    await asyncio.sleep(0.2)
    assert not joining.done()  # it waits for the write in flight, not past it
    release.set()
    position = await writing
    await joining
    assert b.current_position() == position


async def test_a_commit_is_not_visible_before_the_news_of_an_earlier_one(
    two_processes: tuple[Database, Database],
) -> None:
    """B commits, its news is still on the way to A; A commits next: A must not show its
    own position (a reader there would skip B's commit, whose change records it has not
    got yet) until B's news arrives."""
    db_a, db_b = two_processes
    a = await StreamIdGenerator.create(db_a, "presence")
    b = await StreamIdGenerator.create(db_b, "presence")
    in_flight: list[tuple[int, int]] = []  # B's news, held back
    await a.use_cluster(db_a, lambda _, previous, position: b.advance(previous, position))
    await b.use_cluster(db_b, lambda _, previous, position: in_flight.append((previous, position)))
    async with db_b.transaction() as txn:
        from_b = await b.next_id(txn)
    async with db_a.transaction() as txn:
        from_a = await a.next_id(txn)
    assert from_a > from_b
    assert a.current_position() < from_b  # A waits for B's news
    assert b.current_position() == from_a  # B heard A's, which follows its own
    for previous, position in in_flight:
        a.advance(previous, position)
    assert a.current_position() == from_a
    # A rolled-back allocation is no link: it holds nobody up.
    with pytest.raises(RuntimeError):
        async with db_a.transaction() as txn:
            await a.next_id(txn)
            raise RuntimeError("rolled back")
    async with db_b.transaction() as txn:
        last = await b.next_id(txn)
    for previous, position in in_flight[1:]:
        a.advance(previous, position)
    assert a.current_position() == b.current_position() == last
    assert a.stalled_for() == 0.0


async def test_cluster_mode_needs_postgres(tmp_path: Path) -> None:
    db = await open_database(str(tmp_path / "one.db"))
    try:
        stream = await StreamIdGenerator.create(db, "events")
        with pytest.raises(StorageError):
            await stream.use_cluster(db, lambda *_: None)
    finally:
        await db.close()
