"""KeyedLock: one holder per key, other keys in parallel, nothing kept for idle keys.
SharedTasks: one task per key for concurrent callers, surviving callers that leave."""

from __future__ import annotations

import asyncio

import pytest

from starling.locks import KeyedLock, SharedTasks


async def test_one_holder_per_key_in_arrival_order() -> None:
    locks: KeyedLock[str] = KeyedLock()
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, key: str) -> None:
        async with locks(key):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(hold("a", "room"))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("b", "room"))
    other = asyncio.create_task(hold("c", "other room"))
    await asyncio.sleep(0)
    # "c" holds its own key while "a" holds "room"; "b" waits for "a".
    assert order == ["a in", "c in"]
    assert locks.locked("room") and locks.locked("other room")
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second, other), 10)
    assert order.index("a out") < order.index("b in")
    assert len(locks) == 0 and not locks.locked("room")


async def test_a_failing_holder_releases_and_forgets_the_key() -> None:
    locks: KeyedLock[int] = KeyedLock()

    async def fail() -> None:
        async with locks(1):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail()
    assert len(locks) == 0
    async with locks(1):
        assert locks.locked(1)


async def test_a_cancelled_waiter_does_not_leak() -> None:
    locks: KeyedLock[str] = KeyedLock()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks("k"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks("k"):
            pass

    h = asyncio.create_task(holder())
    await held.wait()
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    w.cancel()
    release.set()
    await asyncio.wait_for(h, 10)
    await asyncio.gather(w, return_exceptions=True)
    assert len(locks) == 0


async def test_shared_tasks_one_run_per_key_while_it_runs() -> None:
    tasks: SharedTasks[str, int] = SharedTasks()
    started: list[str] = []
    release = asyncio.Event()

    async def work(key: str) -> int:
        started.append(key)
        await release.wait()
        return len(started)

    callers = [asyncio.create_task(tasks.run(k, lambda k=k: work(k))) for k in "aab"]
    for _ in range(5):  # the callers start, then the tasks they share
        await asyncio.sleep(0)
    assert started == ["a", "b"] and "a" in tasks and len(tasks) == 2
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*callers), 10) == [2, 2, 2]
    assert len(tasks) == 0
    # Done work is forgotten: the next call runs again.
    assert await tasks.run("a", lambda: work("a")) == 3


async def test_shared_tasks_survive_a_caller_that_leaves_and_share_errors() -> None:
    tasks: SharedTasks[str, int] = SharedTasks()
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        raise ValueError("boom")

    leaver = asyncio.create_task(tasks.run("k", work))
    stayer = asyncio.create_task(tasks.run("k", work))
    for _ in range(5):
        await asyncio.sleep(0)
    leaver.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert "k" in tasks  # the first caller leaving does not cancel the work
    release.set()
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(stayer, 10)
    assert leaver.cancelled() and len(tasks) == 0
