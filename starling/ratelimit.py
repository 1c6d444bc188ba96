"""Rate limiting with token buckets, keyed per action and per user or IP.

Each configured `rc_*` limit is a bucket of `burst_count` tokens refilled at
`per_second`; an action that finds the bucket empty gets 429 `M_LIMIT_EXCEEDED` with
`retry_after_ms` (spec: client-server-api "Rate limiting"). Buckets live in memory: they
are cheap, and losing them on restart only forgives a few requests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starling.config import Config, RateLimit
from starling.errors import limit_exceeded

# Buckets idle this long are full again and can be forgotten.
_SWEEP_EVERY = 10_000


class TokenBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._ops = 0

    def take(self, action: str, key: str, limit: RateLimit, cost: float = 1.0) -> None:
        """Spend `cost` tokens or raise M_LIMIT_EXCEEDED."""
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

    def spend(self, action: str, key: str, limit: RateLimit, cost: float) -> None:
        """Spend `cost` tokens that were already used (bytes downloaded): the bucket may
        go below zero, and `take` refuses until it has refilled."""
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
        self._buckets = buckets or TokenBuckets()
        # Admins' per-user overrides of rc_message (Synapse's override_ratelimit).
        self._message_overrides: dict[str, RateLimit] = {}

    def set_message_override(self, user_id: str, limit: RateLimit | None) -> None:
        """Replace rc_message for one user (0 per second and 0 burst: no limit); None
        goes back to rc_message."""
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
        self._buckets.take("message", user_id, limit)

    async def check_registration(self, ip: str) -> None:
        self._buckets.take("registration", ip, self._config.rc_registration)

    async def check_login(self, ip: str, user_id: str | None) -> None:
        self._buckets.take("login_address", ip, self._config.rc_login.address)
        if user_id is not None:
            self._buckets.take("login_account", user_id, self._config.rc_login.account)

    async def check_failed_login(self, user_id: str) -> None:
        self._buckets.take("login_failed", user_id, self._config.rc_login.failed_attempts)

    async def check_join(self, user_id: str, room_id: str, local: bool = True) -> None:
        joins = self._config.rc_joins
        self._buckets.take("join", user_id, joins.local if local else joins.remote)
        self._buckets.take("join_room", room_id, self._config.rc_joins_per_room)

    async def check_invite(self, sender: str, room_id: str, target: str) -> None:
        inv = self._config.rc_invites
        self._buckets.take("invite_room", room_id, inv.per_room)
        self._buckets.take("invite_user", target, inv.per_user)
        self._buckets.take("invite_issuer", sender, inv.per_issuer)

    async def check_to_device(self, sender: str, messages: int) -> None:
        """`messages` to-device messages (one per recipient device) from `sender`; a
        request larger than the burst takes the whole bucket, so it can still pass."""
        limit = self._config.rc_to_device
        self._buckets.take("to_device", sender, limit, float(min(messages, limit.burst_count)))

    async def check_redaction(self, user_id: str, *, own: bool) -> None:
        """A redaction: of one's own event it is a message; of someone else's (a room
        moderator's) it spends `rc_admin_redaction` when that is set (Synapse's rule)."""
        admin = self._config.rc_admin_redaction
        if own or admin is None:
            self._buckets.take("message", user_id, self._config.rc_message)
        else:
            self._buckets.take("admin_redaction", user_id, admin)
