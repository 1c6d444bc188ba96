"""Rate-limit buckets shared through Redis (starling/cluster/ratelimit.py): two
`TokenBuckets` standing for two processes spend one allowance, a lockout set by one is
seen by the other, and a Redis that does not answer makes each count on its own (never a
request that fails or hangs). Needs Redis ($STARLING_TEST_REDIS, as tests/cluster)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from starling.cluster.ratelimit import RedisBuckets
from starling.config import RateLimit, RedisConfig
from starling.errors import MatrixError
from starling.ratelimit import TokenBuckets
from tests.cluster.test_workers import _redis_address, _require_redis

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def _config() -> RedisConfig:
    host, port = _redis_address()
    return RedisConfig(host=host, port=port)


async def _pair() -> tuple[TokenBuckets, TokenBuckets, list[RedisBuckets]]:
    await _require_redis()
    prefix = f"starling-test:{secrets.token_hex(6)}"
    shared = [RedisBuckets(_config(), prefix), RedisBuckets(_config(), prefix)]
    a, b = TokenBuckets(), TokenBuckets()
    a.shared, b.shared = shared
    return a, b, shared


async def test_two_processes_spend_one_allowance() -> None:
    a, b, shared = await _pair()
    try:
        limit = RateLimit(per_second=0.5, burst_count=4)
        for buckets in (a, b, a, b):
            await buckets.take("message", "@u:x", limit)
        with pytest.raises(MatrixError) as refused:
            await a.take("message", "@u:x", limit)
        assert refused.value.errcode == "M_LIMIT_EXCEEDED"
        # About 2 s until one token is back at 0.5 a second.
        assert 1000 <= refused.value.extra["retry_after_ms"] <= 2000
        with pytest.raises(MatrixError):
            await b.take("message", "@u:x", limit)
        # Other keys and actions have their own buckets.
        await b.take("message", "@v:x", limit)
        await b.take("join", "@u:x", limit)
        # An overdraft (bytes already downloaded) is seen by the other process.
        big = RateLimit(per_second=1000.0, burst_count=1000)
        await a.spend("remote_media", "10.0.0.1", big, 5000)
        with pytest.raises(MatrixError) as overdrawn:
            await b.take("remote_media", "10.0.0.1", big)
        assert overdrawn.value.extra["retry_after_ms"] >= 4000
    finally:
        for s in shared:
            await s.close()


async def test_the_buckets_refill_on_redis_time() -> None:
    a, b, shared = await _pair()
    try:
        limit = RateLimit(per_second=20.0, burst_count=1)
        await a.take("login_address", "10.0.0.2", limit)
        with pytest.raises(MatrixError):
            await b.take("login_address", "10.0.0.2", limit)
        await asyncio.sleep(0.1)  # two tokens' worth, capped at the burst of one
        await b.take("login_address", "10.0.0.2", limit)
        with pytest.raises(MatrixError):
            await a.take("login_address", "10.0.0.2", limit)
    finally:
        for s in shared:
            await s.close()


async def test_a_lockout_holds_on_every_process() -> None:
    a, b, shared = await _pair()
    try:
        assert await b.held("login_lockout", "@u:x") == 0
        await a.hold("login_lockout", "@u:x", 5000)
        assert 4000 < await b.held("login_lockout", "@u:x") <= 5000
        assert await b.held("login_lockout", "@other:x") == 0
    finally:
        for s in shared:
            await s.close()


async def test_without_redis_each_process_counts_its_own() -> None:
    # Nothing listens on port 1: every call fails fast, and the buckets are local.
    unreachable = RedisBuckets(RedisConfig(host="127.0.0.1", port=1), "starling-test:down")
    a = TokenBuckets()
    a.shared = unreachable
    try:
        limit = RateLimit(per_second=0.01, burst_count=2)
        started = time.monotonic()
        await a.take("message", "@u:x", limit)
        await a.take("message", "@u:x", limit)
        with pytest.raises(MatrixError):
            await a.take("message", "@u:x", limit)
        await a.hold("login_lockout", "@u:x", 3000)
        assert await a.held("login_lockout", "@u:x") > 2000
        assert time.monotonic() - started < 2.0  # one failed attempt, then local
    finally:
        await unreachable.close()
