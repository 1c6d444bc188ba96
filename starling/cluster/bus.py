"""The bus between the processes (workers) of one server: Redis pub/sub (docs/scaling.md).

Every process publishes what the others must hear — committed stream positions, cache
invalidations, notifier wake-ups, persisted events — on one channel, in batches, and
applies every other process's batches in the order they were sent. A batch is applied in
three phases, so that a reader never sees a position before what it implies:

1. its messages whose handlers run *before* positions (cache invalidations, the change
   caches, persisted events replayed to this process's listeners — awaited in order);
2. its stream positions;
3. its messages whose handlers run *after* positions (notifier wake-ups).

Redis pub/sub keeps one publisher's messages in order but keeps nothing for a subscriber
that is not connected. So when this process's subscription is lost and comes back, it
runs the `resync` handlers (which re-read positions from PostgreSQL and drop every cache
another process's messages would have kept fresh) before applying anything new; a batch
this process could not publish is kept and sent again once Redis answers.

Nothing here decides what is correct: ordering of positions is PostgreSQL's (see
storage/streams.py) and room exclusion too (rooms/locks.py); the bus only carries news.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from starling.config import RedisConfig

logger = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None] | None]
PositionHandler = Callable[[str, int, int], None]  # (stream, previous, position)
ResyncHandler = Callable[[], Awaitable[None]]

# Reconnecting to Redis: from 0.1 s doubling to 5 s.
_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0
# How long one read of the subscription waits (bounds how late stop() is noticed).
_POLL_SECONDS = 1.0
# Largest batch this process publishes at once (more waits for the next one).
MAX_BATCH_MESSAGES = 1000


class BusUnavailable(Exception):
    """Redis cannot be reached at start."""


def channel_for(server_name: str, database: str) -> str:
    """The server's channel: the processes of one server share its name and database.
    (Redis pub/sub ignores the database number, so two servers on one Redis — staging and
    production, or test runs — are kept apart by the channel.)"""
    digest = hashlib.sha256(f"{server_name}\0{database}".encode()).hexdigest()[:16]
    return f"starling:{server_name}:{digest}"


class ClusterBus:
    def __init__(self, instance: str, config: RedisConfig, channel: str) -> None:
        self.instance = instance
        self._config = config
        self.channel = channel
        self._before: dict[str, Handler] = {}
        self._after: dict[str, Handler] = {}
        self._position_handlers: list[PositionHandler] = []
        self._resync_handlers: list[ResyncHandler] = []
        self._outbox: list[list[Any]] = []
        self._positions: list[list[Any]] = []
        self._pending = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._stopping = False
        self.received = 0  # batches applied from other processes (tests, metrics)

    # --- registration ----------------------------------------------------------------

    def on(self, kind: str, handler: Handler, *, after_positions: bool = False) -> None:
        """Run `handler(payload)` for each `kind` message of another process."""
        (self._after if after_positions else self._before)[kind] = handler

    def on_position(self, handler: PositionHandler) -> None:
        self._position_handlers.append(handler)

    def on_resync(self, handler: ResyncHandler) -> None:
        self._resync_handlers.append(handler)

    # --- sending ---------------------------------------------------------------------

    def send(self, kind: str, payload: Any) -> None:
        """Queue a message for the other processes (sent soon, in order; no I/O here)."""
        self._outbox.append([kind, payload])
        self._pending.set()

    def position(self, stream: str, previous: int, position: int) -> None:
        """This process committed `position` on `stream`, the commit after `previous`."""
        self._positions.append([stream, previous, position])
        self._pending.set()

    def add_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` while the bus runs (cancelled by stop)."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe; BusUnavailable if Redis does not answer."""
        c = self._config
        self._client = aioredis.Redis(
            host=c.host,
            port=c.port,
            password=c.password,
            db=c.dbid,
            socket_connect_timeout=5,
        )
        try:
            await self._client.ping()
        except (RedisError, OSError) as e:
            await self._client.aclose()
            raise BusUnavailable(f"cannot reach Redis at {c.host}:{c.port}: {e}") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive()), loop.create_task(self._send_loop())]
        await asyncio.wait_for(self._subscribed.wait(), 10)

    async def stop(self) -> None:
        """Send what is queued (bounded), then disconnect."""
        self._stopping = True
        if self._outbox or self._positions:
            self._pending.set()
            for _ in range(20):
                if not self._outbox and not self._positions:
                    break
                await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the two loops ---------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._client is not None
        delay = _FIRST_RETRY
        while True:
            await self._pending.wait()
            self._pending.clear()
            messages = self._outbox[:MAX_BATCH_MESSAGES]
            del self._outbox[: len(messages)]
            positions: list[list[Any]] = []
            if self._outbox:
                # Positions go with the last of the messages queued before them: a
                # position must never arrive before the news it implies.
                self._pending.set()
            else:
                positions, self._positions = self._positions, []
            if not messages and not positions:
                continue
            data = orjson.dumps({"i": self.instance, "m": messages, "p": positions})
            while True:
                try:
                    await self._client.publish(self.channel, data)
                    delay = _FIRST_RETRY
                    break
                except (RedisError, OSError) as e:
                    # Kept and sent again: the others resync when they reconnect, and
                    # this batch is news they must still get after that.
                    logger.warning("cluster bus: publish failed (%s); retrying", e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY)

    async def _receive(self) -> None:
        assert self._client is not None
        delay = _FIRST_RETRY
        connected_before = False
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if connected_before:
                    logger.warning("cluster bus: reconnected; resyncing positions and caches")
                    await self._resync()
                connected_before = True
                self._subscribed.set()
                delay = _FIRST_RETRY
                while True:
                    message = await pubsub.get_message(timeout=_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        await self._apply(message["data"])
            except (RedisError, OSError) as e:
                logger.warning("cluster bus: subscription lost (%s)", e)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY)

    async def _resync(self) -> None:
        for handler in self._resync_handlers:
            try:
                await handler()
            except Exception:
                logger.exception("cluster bus: resync handler failed")

    async def _apply(self, data: bytes) -> None:
        try:
            batch = orjson.loads(data)
            if not isinstance(batch, dict) or batch.get("i") == self.instance:
                return
            messages = batch.get("m") or []
            positions = batch.get("p") or []
        except orjson.JSONDecodeError:
            logger.warning("cluster bus: ignoring a message that is not JSON")
            return
        self.received += 1
        failed = False
        for kind, payload in messages:
            handler = self._before.get(kind)
            if handler is not None:
                failed |= not await self._run(handler, kind, payload)
        for stream, previous, position in positions:
            for position_handler in self._position_handlers:
                position_handler(stream, int(previous), int(position))
        for kind, payload in messages:
            handler = self._after.get(kind)
            if handler is not None:
                failed |= not await self._run(handler, kind, payload)
        if failed:
            # Some news was not applied: act as after a lost subscription.
            await self._resync()

    @staticmethod
    async def _run(handler: Handler, kind: str, payload: Any) -> bool:
        try:
            result = handler(payload)
            if result is not None:
                await result
        except Exception:
            logger.exception("cluster bus: handler for %r failed", kind)
            return False
        return True
