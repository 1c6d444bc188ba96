"""Rate-limit buckets shared by the processes of one server, in Redis (docs/scaling.md).

Each bucket is a Redis hash (tokens, time of the last refill) refilled and spent by one
Lua script, so a check is one round trip and atomic whichever process makes it; the
clock is Redis's (`TIME`), so processes on machines whose clocks differ agree. A bucket
expires once it would be full again (an idle client costs nothing). Lockouts (`hold`)
are keys with a time to live.

Every call has a short timeout: a Redis that does not answer makes `TokenBuckets` count
in the process for a while (starling/ratelimit.py), never a request that hangs.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from starling.config import RateLimit, RedisConfig
from starling.ratelimit import SharedUnavailable

# A rate-limit check waits at most this long for Redis's answer.
TIMEOUT_SECONDS = 0.5
# Redis connections one process may use for rate limits at once; more checks at once
# wait for one, at most POOL_WAIT_SECONDS.
MAX_CONNECTIONS = 32
POOL_WAIT_SECONDS = 2.0

# KEYS[1]: the bucket. ARGV: burst, per second, cost, overdraw ("1": spend even below
# zero). Returns the seconds to wait as a string ("0": spent).
_SPEND = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(held[1])
local at = tonumber(held[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
end
local wait = 0
if ARGV[4] == '1' or tokens >= cost then
  tokens = tokens - cost
elseif rate > 0 then
  wait = (cost - tokens) / rate
else
  wait = 60
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
local ttl = 3600
if rate > 0 then
  ttl = math.max(1, math.min(3600, math.ceil((burst - tokens) / rate) + 1))
end
redis.call('EXPIRE', KEYS[1], ttl)
return tostring(wait)
"""


class RedisBuckets:
    """`starling.ratelimit.SharedBuckets` in Redis, under `prefix` (the server's)."""

    def __init__(self, config: RedisConfig, prefix: str) -> None:
        self._prefix = prefix
        # A blocking pool: more checks at once than connections wait for one (a plain
        # pool refuses them, "Too many connections").
        pool = aioredis.BlockingConnectionPool(
            host=config.host,
            port=config.port,
            password=config.password,
            db=config.dbid,
            socket_connect_timeout=TIMEOUT_SECONDS,
            socket_timeout=TIMEOUT_SECONDS,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT_SECONDS,
        )
        self._client = aioredis.Redis(
            connection_pool=pool,
            # No retries: redis-py's default backs off for seconds; a failed check falls
            # back to the process's own buckets instead.
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(_SPEND)

    async def spend(self, bucket: str, limit: RateLimit, cost: float, overdraw: bool) -> float:
        try:
            wait = await self._script(
                keys=[f"{self._prefix}:rl:{bucket}"],
                args=[
                    repr(float(limit.burst_count)),
                    repr(float(limit.per_second)),
                    repr(float(cost)),
                    "1" if overdraw else "0",
                ],
            )
        except (RedisError, OSError) as e:
            raise SharedUnavailable(str(e)) from None
        return float(wait)

    async def hold(self, name: str, ms: int) -> None:
        try:
            await self._client.set(f"{self._prefix}:hold:{name}", b"1", px=max(1, ms))
        except (RedisError, OSError) as e:
            raise SharedUnavailable(str(e)) from None

    async def held(self, name: str) -> int:
        try:
            remaining = await self._client.pttl(f"{self._prefix}:hold:{name}")
        except (RedisError, OSError) as e:
            raise SharedUnavailable(str(e)) from None
        return max(0, int(remaining))  # -2: no such key

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()
