"""Erased users (a deactivation with `erase: true`, Synapse's GDPR erasure): their events
stay in rooms, but whoever was not joined when one was sent sees it only in redacted form,
and other servers get it redacted (Synapse's visibility rules for erased senders).

Read paths ask `erased_among` for every page of events, so answers are cached per user
for a short while; this process's own erasures and reactivations update the cache at once
(another worker's reach it within CACHE_SECONDS)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

CACHE_SECONDS = 30.0
CACHE_MAX = 100_000

Lookup = Callable[[list[str]], Awaitable[set[str]]]


class ErasedUsers:
    def __init__(
        self,
        lookup: Lookup,
        server_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._suffix = ":" + server_name
        self._clock = clock
        self._cache: dict[str, tuple[bool, float]] = {}
        # Bumped by every `changed`: a look-up that began before an erasure must not
        # cache its older answer after it (the user would read as not erased).
        self._generation = 0

    async def erased_among(self, user_ids: Iterable[str]) -> set[str]:
        """Which of these users are erased: only this server's users can be (another
        server's erasure is for that server to apply)."""
        now = self._clock()
        erased: set[str] = set()
        missing: list[str] = []
        for user_id in set(user_ids):
            if not user_id.endswith(self._suffix):
                continue
            hit = self._cache.get(user_id)
            if hit is not None and hit[1] > now:
                if hit[0]:
                    erased.add(user_id)
            else:
                missing.append(user_id)
        if missing:
            generation = self._generation
            found = await self._lookup(sorted(missing))
            if generation == self._generation:
                if len(self._cache) + len(missing) > CACHE_MAX:
                    self._cache.clear()
                for user_id in missing:
                    self._cache[user_id] = (user_id in found, now + CACHE_SECONDS)
            erased |= found
        return erased

    def changed(self, user_id: str) -> None:
        """A user was erased or reactivated here: ask again next time."""
        self._generation += 1
        self._cache.pop(user_id, None)
