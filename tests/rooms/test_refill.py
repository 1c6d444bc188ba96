"""The one over-fetch loop (starling.rooms.refill): batch sizes, where the cursor stops,
and whether more may follow — on a list of integers, no database needed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from starling.rooms.refill import FetchSchedule, collect


class ListSource:
    """Rows of a list from a cursor; records the batch sizes asked for."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows
        self.cursor = 0
        self.asked: list[int] = []

    async def read(self, n: int) -> Sequence[int]:
        self.asked.append(n)
        page = self.rows[self.cursor : self.cursor + n]
        self.cursor += len(page)
        return page

    def stop_after(self, row: int) -> None:
        self.cursor = self.rows.index(row) + 1


async def evens(rows: Sequence[int]) -> Sequence[int]:
    return [r for r in rows if r % 2 == 0]


def ident(row: int) -> int:
    return row


def test_schedule_doubles_up_to_the_maximum_for_a_bounded_number_of_rounds() -> None:
    assert list(FetchSchedule(3, 20, 5).sizes()) == [3, 6, 12, 20, 20]
    assert list(FetchSchedule(50, 20, 2).sizes()) == [20, 20]
    assert list(FetchSchedule(0, 20, 2).sizes()) == [1, 2]


async def test_refills_a_thinned_page_and_stops_right_after_the_last_row_returned() -> None:
    source = ListSource(list(range(1, 40)))
    got, more = await collect(source, evens, ident, 5, FetchSchedule(4, 100, 4))
    assert got == [2, 4, 6, 8, 10]
    assert source.asked == [4, 8]  # 2 kept of the first 4, then enough in the next 8
    # Rows 11 and 12 were read but not returned: the cursor is after 10, more may follow.
    assert source.cursor == 10
    assert more is True


async def test_the_end_of_the_source_is_reported() -> None:
    source = ListSource([1, 2, 3, 4])
    got, more = await collect(source, evens, ident, 5, FetchSchedule(4, 100, 4))
    assert got == [2, 4]
    assert more is False
    assert source.asked == [4, 8]


async def test_limit_reached_on_the_last_row_of_the_source_is_its_end() -> None:
    source = ListSource([1, 2, 3, 4])
    got, more = await collect(source, evens, ident, 2, FetchSchedule(10, 100, 4))
    assert (got, more) == ([2, 4], False)


async def test_rounds_run_out_with_more_possibly_left() -> None:
    source = ListSource(list(range(1, 200, 2)))  # odd numbers only: nothing kept
    got, more = await collect(source, evens, ident, 5, FetchSchedule(2, 8, 3))
    assert got == []
    assert more is True
    assert source.asked == [2, 4, 8]


@pytest.mark.parametrize("limit", [0, -1])
async def test_no_rows_wanted_reads_nothing(limit: int) -> None:
    source = ListSource([2, 4])
    assert await collect(source, evens, ident, limit, FetchSchedule(2, 8, 3)) == ([], True)
    assert source.asked == []
