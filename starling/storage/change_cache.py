"""Which keys (rooms, users) changed on a stream after a position, remembered in memory.

A store records `changed(key, position)` when a write that a query would find commits
(from a `call_after_commit` callback, so the stream's position and the record move
together, with no await between them). Until `start(position)` is called the cache knows
nothing; from then on it knows every change after `earliest`. `changed_between` answers
"which of these keys changed in (since, upto]" for most calls without a query: a key last
changed at or below `since` did not; one last changed in (since, upto] did; one last
changed after `upto` may have (it is returned among the unsure, for the caller to ask
the database). When `since` is older than what the cache knows, it answers None.

Bounded: past `max_keys` the least recently changed keys are forgotten and `earliest`
moves up to the newest position forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_UNKNOWN = 2**63 - 1


class StreamChangeCache(Generic[K]):
    def __init__(self, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        self._earliest = _UNKNOWN
        self._last: OrderedDict[K, int] = OrderedDict()
        # Set with workers (starling/cluster): each local change is told to the others.
        self.on_change: Callable[[K, int], None] | None = None

    def start(self, position: int) -> None:
        """Every change after `position` is recorded from now on."""
        if self._earliest == _UNKNOWN:
            self._earliest = position

    @property
    def earliest(self) -> int:
        return self._earliest

    def changed(self, key: K, position: int) -> None:
        self.changed_here(key, position)
        if self.on_change is not None:
            self.on_change(key, position)

    def known_from(self, position: int) -> None:
        """Changes at or below `position` may have been missed (recorded ones stay)."""
        if self._earliest == _UNKNOWN or position > self._earliest:
            self._earliest = position

    def reset(self, position: int) -> None:
        """Forget everything: only changes after `position` are known from now on (the
        other processes' changes may have been missed)."""
        self._last.clear()
        self._earliest = position

    def changed_here(self, key: K, position: int) -> None:
        """`changed` for another process's write: not told on."""
        last = self._last.pop(key, None)
        self._last[key] = position if last is None else max(last, position)
        while len(self._last) > self._max_keys:
            _, forgotten = self._last.popitem(last=False)
            self._earliest = max(self._earliest, forgotten)

    def knows(self, since: int) -> bool:
        return self._earliest != _UNKNOWN and since >= self._earliest

    def changed_between(
        self, keys: Iterable[K], since: int, upto: int
    ) -> tuple[set[K], list[K]] | None:
        """(keys that changed in (since, upto], keys that changed after `upto` and may
        also have in the window), or None if the cache cannot tell."""
        if not self.knows(since):
            return None
        certain: set[K] = set()
        unsure: list[K] = []
        for key in keys:
            last = self._last.get(key)
            if last is None or last <= since:
                continue
            if last <= upto:
                certain.add(key)
            else:
                unsure.append(key)
        return certain, unsure
