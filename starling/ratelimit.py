"""Rate limiting with token buckets, keyed per action and per user or IP.

Each configured `rc_*` limit is a bucket of `burst_count` tokens refilled at
`per_second`; an action that finds the bucket empty gets 429 `M_LIMIT_EXCEEDED` with
`retry_after_ms` (spec: client-server-api "Rate limiting"). One process keeps its
buckets in memory: they are cheap, and losing them on restart only forgives a few
requests. With workers (docs/scaling.md) the buckets are shared: `shared` is set to
Redis's (starling/cluster/ratelimit.py), so a client spread over several processes gets
one allowance, not one per process; if Redis does not answer, each process falls back to
its own buckets for a few seconds (a limit counted per process is better than none, and
better than refusing everyone).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from starling.config import Config, RateLimit
from starling.errors import limit_exceeded

logger = logging.getLogger(__name__)

# Buckets idle this long are full again and can be forgotten.
_SWEEP_EVERY = 10_000
# After the shared buckets fail, how long this process uses its own.
SHARED_RETRY_SECONDS = 5.0


class SharedUnavailable(Exception):
    """The shared buckets did not answer."""


class SharedBuckets(Protocol):
    """Buckets every process of the server spends from (Redis)."""

    async def spend(self, bucket: str, limit: RateLimit, cost: float, overdraw: bool) -> float:
        """Refill `bucket` and spend `cost` from it: 0.0 when spent, else the seconds
        until `cost` would be there (nothing spent). `overdraw`: spend anyway, going
        below zero. Raises SharedUnavailable."""
        ...

    async def hold(self, name: str, ms: int) -> None:
        """Mark `name` held for `ms` milliseconds."""
        ...

    async def held(self, name: str) -> int:
        """The milliseconds `name` is still held for (0: not held)."""
        ...


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._holds: dict[tuple[str, str], float] = {}
        self._ops = 0
        self.shared: SharedBuckets | None = None
        self._shared_down_until = 0.0

    def _shared(self) -> SharedBuckets | None:
        if self.shared is None or self._clock() < self._shared_down_until:
            return None
        return self.shared

    def _shared_failed(self, e: Exception) -> None:
        now = self._clock()
        if now >= self._shared_down_until:  # once per outage, not per check in flight
            logger.warning(
                "rate limits: the shared buckets failed (%s); counting in this process for %.0f s",
                e,
                SHARED_RETRY_SECONDS,
            )
        self._shared_down_until = now + SHARED_RETRY_SECONDS

    async def take(self, action: str, key: str, limit: RateLimit, cost: float = 1.0) -> None:
        """Spend `cost` tokens or raise M_LIMIT_EXCEEDED."""
        if limit.per_second <= 0 and limit.burst_count <= 0:
            raise limit_exceeded(60_000)
        shared = self._shared()
        if shared is not None:
            try:
                wait = await shared.spend(f"{action}:{key}", limit, cost, False)
            except SharedUnavailable as e:
                self._shared_failed(e)
            else:
                if wait > 0:
                    raise limit_exceeded(max(1, math.ceil(wait * 1000)))
                return
        self.take_here(action, key, limit, cost)

    async def spend(self, action: str, key: str, limit: RateLimit, cost: float) -> None:
        """Spend `cost` tokens that were already used (bytes downloaded): the bucket may
        go below zero, and `take` refuses until it has refilled."""
        shared = self._shared()
        if shared is not None:
            try:
                await shared.spend(f"{action}:{key}", limit, cost, True)
                return
            except SharedUnavailable as e:
                self._shared_failed(e)
        self.spend_here(action, key, limit, cost)

    async def hold(self, action: str, key: str, ms: int) -> None:
        """Hold (`action`, `key`) for `ms` milliseconds (a lockout), on every process."""
        shared = self._shared()
        if shared is not None:
            try:
                await shared.hold(f"{action}:{key}", ms)
                return
            except SharedUnavailable as e:
                self._shared_failed(e)
        if len(self._holds) >= _SWEEP_EVERY:
            now = self._clock()
            self._holds = {k: v for k, v in self._holds.items() if v > now}
        self._holds[(action, key)] = self._clock() + ms / 1000

    async def held(self, action: str, key: str) -> int:
        """How many milliseconds (`action`, `key`) is still held for (0: it is not)."""
        shared = self._shared()
        if shared is not None:
            try:
                return await shared.held(f"{action}:{key}")
            except SharedUnavailable as e:
                self._shared_failed(e)
        until = self._holds.get((action, key))
        if until is None:
            return 0
        remaining = until - self._clock()
        if remaining <= 0:
            del self._holds[(action, key)]
            return 0
        return math.ceil(remaining * 1000)

    def take_here(self, action: str, key: str, limit: RateLimit, cost: float = 1.0) -> None:
        """`take` in this process's own buckets."""
        if limit.per_second <= 0 and limit.burst_count <= 0:
            raise limit_exceeded(60_000)
        now = self._clock()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._sweep(now)
        tokens, last = self._buckets.get((action, key), (float(limit.burst_count), now))
        tokens = min(float(limit.burst_count), tokens + (now - last) * limit.per_second)
        if tokens < cost:
            wait = (cost - tokens) / limit.per_second if limit.per_second > 0 else 60.0
            self._buckets[(action, key)] = (tokens, now)
            raise limit_exceeded(max(1, math.ceil(wait * 1000)))
        self._buckets[(action, key)] = (tokens - cost, now)

    def spend_here(self, action: str, key: str, limit: RateLimit, cost: float) -> None:
        """`spend` in this process's own buckets."""
        now = self._clock()
        tokens, last = self._buckets.get((action, key), (float(limit.burst_count), now))
        tokens = min(float(limit.burst_count), tokens + (now - last) * limit.per_second)
        self._buckets[(action, key)] = (tokens - cost, now)

    def _sweep(self, now: float) -> None:
        # Forget buckets untouched for an hour: any realistic limit has refilled them.
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 3600}


class RateLimits:
    """The limits of the running server, by Synapse's rc_* names."""

    def __init__(self, config: Config, buckets: TokenBuckets | None = None) -> None:
        self._config = config
        # Shared with the other services that limit something (app.py).
        self.buckets = self._buckets = buckets or TokenBuckets()
        # Admins' per-user overrides of rc_message (Synapse's override_ratelimit).
        self._message_overrides: dict[str, RateLimit] = {}
        # With workers: tells the other processes of an override set here.
        self.relay: Callable[[str, RateLimit | None], None] | None = None

    def set_message_override(self, user_id: str, limit: RateLimit | None) -> None:
        """Replace rc_message for one user (0 per second and 0 burst: no limit); None
        goes back to rc_message. Every process's limits change."""
        self.set_message_override_here(user_id, limit)
        if self.relay is not None:
            self.relay(user_id, limit)

    def replace_message_overrides_here(self, overrides: dict[str, RateLimit]) -> None:
        """All the overrides at once, as stored (a process that may have missed some)."""
        self._message_overrides = dict(overrides)

    def set_message_override_here(self, user_id: str, limit: RateLimit | None) -> None:
        """`set_message_override` in this process only."""
        if limit is None:
            self._message_overrides.pop(user_id, None)
        else:
            self._message_overrides[user_id] = limit

    async def check_message(self, user_id: str) -> None:
        limit = self._message_overrides.get(user_id)
        if limit is None:
            limit = self._config.rc_message
        elif limit.per_second <= 0 and limit.burst_count <= 0:
            return
        await self._buckets.take("message", user_id, limit)

    async def check_registration(self, ip: str) -> None:
        await self._buckets.take("registration", ip, self._config.rc_registration)

    async def check_login(self, ip: str, user_id: str | None) -> None:
        await self._buckets.take("login_address", ip, self._config.rc_login.address)
        if user_id is not None:
            await self._buckets.take("login_account", user_id, self._config.rc_login.account)

    async def check_failed_login(self, user_id: str) -> None:
        await self._buckets.take("login_failed", user_id, self._config.rc_login.failed_attempts)

    async def check_join(self, user_id: str, room_id: str, local: bool = True) -> None:
        joins = self._config.rc_joins
        await self._buckets.take("join", user_id, joins.local if local else joins.remote)
        await self._buckets.take("join_room", room_id, self._config.rc_joins_per_room)

    async def check_invite(self, sender: str, room_id: str, target: str) -> None:
        inv = self._config.rc_invites
        await self._buckets.take("invite_room", room_id, inv.per_room)
        await self._buckets.take("invite_user", target, inv.per_user)
        await self._buckets.take("invite_issuer", sender, inv.per_issuer)

    async def check_to_device(self, sender: str, messages: int) -> None:
        """`messages` to-device messages (one per recipient device) from `sender`; a
        request larger than the burst takes the whole bucket, so it can still pass."""
        limit = self._config.rc_to_device
        await self._buckets.take(
            "to_device", sender, limit, float(min(messages, limit.burst_count))
        )

    async def check_redaction(self, user_id: str, *, own: bool) -> None:
        """A redaction: of one's own event it is a message; of someone else's (a room
        moderator's) it spends `rc_admin_redaction` when that is set (Synapse's rule)."""
        admin = self._config.rc_admin_redaction
        if own or admin is None:
            await self._buckets.take("message", user_id, self._config.rc_message)
        else:
            await self._buckets.take("admin_redaction", user_id, admin)
