"""How long the sender waits before trying an unreachable destination again.

Exponential from `initial_ms`, doubling per failure. During the first `short_outage_ms` of
an outage the wait is capped at `short_cap_ms`, so a server that restarts or blips is
retried within seconds of coming back (the catch-up target is 5 s); after that it grows to
`long_cap_ms`, so a server that is gone costs one connection attempt per quarter hour. Any
request from the destination, or a successful retry, ends the backoff at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_ms: int = 500
    short_cap_ms: int = 4_000
    short_outage_ms: int = 10 * 60_000
    long_cap_ms: int = 15 * 60_000
    jitter: float = 0.2  # waits are shortened by up to this fraction, never lengthened

    def next_interval(self, previous_ms: int, failing_since_ms: int, now_ms: int) -> int:
        """The wait after a failure, given the previous wait (0 for the first failure)."""
        interval = self.initial_ms if previous_ms <= 0 else previous_ms * 2
        cap = (
            self.short_cap_ms
            if now_ms - failing_since_ms < self.short_outage_ms
            else self.long_cap_ms
        )
        return max(1, min(interval, cap))

    def jittered(self, interval_ms: int) -> int:
        return max(1, int(interval_ms * (1 - self.jitter * random.random())))
