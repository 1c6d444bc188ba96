"""Message retention policies (Synapse: docs/message_retention_policies.md; MSC1763).

A room's `m.room.retention` `max_lifetime` (or, without one, the server's default policy),
kept within the admin's allowed range, says how long its messages live. The admin API's
purge jobs delete expired history in the background (admin.history); until they run, and
as Synapse does, readers are not shown a message older than its room's lifetime: state
events always stay visible (they make the room what it is).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starling.config import RetentionConfig, parse_duration
from starling.protocol.event import StateKey
from starling.storage.events import EventStore
from starling.storage.state import StateStore

RETENTION: StateKey = ("m.room.retention", "")


def _ms(value: str | int | None) -> int | None:
    return None if value is None else parse_duration(value)


class RetentionLimits:
    """The lifetime a room's policy gives, within the server's configuration."""

    def __init__(self, config: RetentionConfig) -> None:
        self.enabled = config.enabled
        self._default = _ms(config.default_policy.max_lifetime)
        self._low = _ms(config.allowed_lifetime_min)
        self._high = _ms(config.allowed_lifetime_max)

    def lifetime(self, policy: Mapping[str, Any] | None) -> int | None:
        """How long (ms) a room's messages live: its m.room.retention max_lifetime (a
        positive integer; anything else is ignored) or the default policy's, within the
        allowed range; None: forever."""
        value = (policy or {}).get("max_lifetime")
        valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
        lifetime = value if valid else self._default
        if lifetime is None:
            return None
        if self._low is not None and lifetime < self._low:
            lifetime = self._low
        if self._high is not None and lifetime > self._high:
            lifetime = self._high
        return lifetime


class RetentionWindow:
    """The oldest origin_server_ts still shown, per room (rooms whose messages live
    forever are left out)."""

    def __init__(
        self,
        limits: RetentionLimits,
        events: EventStore,
        state: StateStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = limits
        self._events = events
        self._state = state
        self._clock = clock

    async def oldest_allowed(self, room_ids: Iterable[str]) -> dict[str, int]:
        if not self._limits.enabled:
            return {}
        current = await self._state.get_current_state_for_rooms(room_ids)
        policy_ids = {r: s[RETENTION] for r, s in current.items() if RETENTION in s}
        policies = await self._events.get_events(list(policy_ids.values()))
        now_ms = int(self._clock() * 1000)
        out: dict[str, int] = {}
        for room_id in current:
            event = policies.get(policy_ids.get(room_id, ""))
            lifetime = self._limits.lifetime(event.content if event is not None else None)
            if lifetime is not None:
                out[room_id] = now_ms - lifetime
        return out
