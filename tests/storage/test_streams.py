"""Stream positions: monotonic, never ahead of an unfinished write, persisted."""

from __future__ import annotations

import asyncio
import random

import pytest

from starling.storage import Database, StorageError, StreamIdGenerator, open_database
from tests.support.dbfixtures import small_pool_config


async def test_ids_are_monotonic_under_concurrency(database: Database) -> None:
    stream = await StreamIdGenerator.create(database, "events")
    assert stream.current_position() == 0
    seen: list[list[int]] = []
    rng = random.Random(7)

    async def writer(count: int) -> None:
        async with database.transaction() as txn:
            ids = await stream.next_ids(txn, count)
            # A reader must never be told the stream is complete past an unfinished id.
            assert stream.current_position() < ids[0]
            await asyncio.sleep(rng.random() / 100)
            more = await stream.next_id(txn)
            assert more > ids[-1]
            seen.append([*ids, more])

    await asyncio.gather(*(writer(rng.randint(1, 3)) for _ in range(30)))
    every = sorted(i for ids in seen for i in ids)
    assert len(every) == len(set(every))
    assert all(ids == sorted(ids) for ids in seen)
    assert stream.current_position() == every[-1]


async def test_current_position_waits_for_the_oldest_unfinished_write(
    database: Database,
) -> None:
    stream = await StreamIdGenerator.create(database, "receipts")
    if database.dialect == "sqlite":
        # One writer: a second transaction cannot start before the first ends.
        async with database.transaction() as txn:
            first = await stream.next_id(txn)
            assert stream.current_position() == first - 1
        assert stream.current_position() == first
        return
    first_allocated = asyncio.Event()
    second_done = asyncio.Event()

    async def slow() -> int:
        async with database.transaction() as txn:
            position = await stream.next_id(txn)
            first_allocated.set()
            await second_done.wait()
            return position

    slow_task = asyncio.create_task(slow())
    await first_allocated.wait()
    async with database.transaction() as txn:
        fast = await stream.next_id(txn)
    second_done.set()
    assert stream.current_position() < fast  # the slow one (below it) is still running
    slow_position = await slow_task
    assert slow_position < fast
    assert stream.current_position() == fast


async def test_rolled_back_ids_do_not_block_the_stream(database: Database) -> None:
    stream = await StreamIdGenerator.create(database, "typing_log")
    async with database.transaction() as txn:
        before = await stream.next_id(txn)
    with pytest.raises(RuntimeError):
        async with database.transaction() as txn:
            await stream.next_ids(txn, 2)
            raise RuntimeError("abandon")
    assert stream.current_position() >= before
    async with database.transaction() as txn:
        after = await stream.next_id(txn)
    assert after > before
    assert stream.current_position() == after


async def test_positions_survive_a_restart(database_url: str) -> None:
    db = await open_database(small_pool_config(database_url))
    try:
        stream = await StreamIdGenerator.create(db, "to_device")
        async with db.transaction() as txn:
            last = (await stream.next_ids(txn, 5))[-1]
        other = await StreamIdGenerator.create(db, "account_data")
        assert other.current_position() == 0
    finally:
        await db.close()
    db = await open_database(small_pool_config(database_url))
    try:
        stream = await StreamIdGenerator.create(db, "to_device")
        assert stream.current_position() >= last
        async with db.transaction() as txn:
            assert await stream.next_id(txn) > last
    finally:
        await db.close()


async def test_invalid_stream_name(database: Database) -> None:
    with pytest.raises(ValueError):
        await StreamIdGenerator.create(database, "Robert'); DROP TABLE users;--")


async def test_allocating_outside_a_transaction_is_refused(database: Database) -> None:
    stream = await StreamIdGenerator.create(database, "events")
    async with database.transaction() as txn:
        pass
    with pytest.raises(StorageError):
        await stream.next_id(txn)
    assert stream.current_position() == 0
