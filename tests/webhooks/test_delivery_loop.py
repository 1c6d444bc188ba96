"""The delivery loop shared by application-service transactions and outgoing webhooks."""

from __future__ import annotations

import asyncio

from starling.delivery.loop import Attempt, DeliveryLoop
from starling.federation.sender.backoff import BackoffPolicy


async def test_retries_the_same_item_in_order_then_fills_then_sleeps() -> None:
    queue: list[str] = ["a", "b", "c"]
    outcomes = {"a": [Attempt.RETRY, Attempt.RETRY, Attempt.DELIVERED], "b": [Attempt.GIVEN_UP]}
    sent: list[str] = []
    fills = 0
    idle = asyncio.Event()

    async def oldest() -> str | None:
        return queue[0] if queue else None

    async def send(item: str) -> Attempt:
        sent.append(item)
        outcome = outcomes.get(item, [Attempt.DELIVERED]).pop(0)
        if outcome is not Attempt.RETRY:
            queue.pop(0)
        return outcome

    async def fill() -> bool:
        nonlocal fills
        fills += 1
        if fills == 1:
            queue.append("d")  # the source had one more
            return True
        idle.set()
        return False

    loop = DeliveryLoop[str](
        "test",
        oldest=oldest,
        send=send,
        fill=fill,
        policy=BackoffPolicy(initial_ms=5, short_cap_ms=10, jitter=0),
    )
    loop.start()
    try:
        await asyncio.wait_for(idle.wait(), 5)
        assert sent == ["a", "a", "a", "b", "c", "d"]
        queue.append("e")  # stored by someone else; a wake-up makes the loop look again
        idle.clear()
        loop.wake.set()
        await asyncio.wait_for(idle.wait(), 5)
        assert sent[-1] == "e"
    finally:
        await loop.stop()
