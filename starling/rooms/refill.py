"""Reading on until enough rows are visible: the one over-fetch loop.

Event filters and history visibility thin out what storage returns, so a reader asks for
more rows than it needs and, when what survives is still short of the limit, reads on from
where it stopped with a doubled batch — a bounded number of rounds, so a room full of
hidden events costs a few queries, never one per event. /messages (sync.history) and
server-side search read one source this way through `collect`; /sync timelines read many
rooms per query and use the `FetchSchedule` alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FetchSchedule:
    """Batch sizes for successive reads: `first`, doubled each round up to `maximum`,
    `rounds` reads at most."""

    first: int
    maximum: int
    rounds: int

    def sizes(self) -> Iterator[int]:
        size = max(1, min(self.first, self.maximum))
        for _ in range(self.rounds):
            yield size
            size = min(size * 2, self.maximum)


class RowSource(Protocol[T]):
    """Rows in reading order from a cursor the source keeps."""

    async def read(self, n: int) -> Sequence[T]:
        """Up to `n` rows after the cursor; the cursor moves past all of them."""
        ...

    def stop_after(self, row: T) -> None:
        """Put the cursor right after `row`, one of the rows the last `read` gave (or a
        row `keep` made of it: the same `key`)."""
        ...


async def collect(
    source: RowSource[T],
    keep: Callable[[Sequence[T]], Awaitable[Sequence[T]]],
    key: Callable[[T], Hashable],
    limit: int,
    schedule: FetchSchedule,
) -> tuple[list[T], bool]:
    """Up to `limit` rows that `keep` lets through (it returns the rows it keeps, in
    their order; a kept row may be a new object, e.g. redacted, with the same `key`), and
    whether the source may hold more after the cursor. When the limit is reached inside
    a batch, the cursor is put right after the last row returned, so the rows read beyond
    it are read again next time."""
    if limit <= 0:
        return [], True
    out: list[T] = []
    for size in schedule.sizes():
        rows = await source.read(size)
        reached_end = len(rows) < size
        kept = await keep(rows) if rows else ()
        wanted = limit - len(out)
        if len(kept) >= wanted:
            out.extend(kept[:wanted])
            last = out[-1]
            source.stop_after(last)
            return out, not (reached_end and key(last) == key(rows[-1]))
        out.extend(kept)
        if reached_end:
            return out, False
    return out, True
