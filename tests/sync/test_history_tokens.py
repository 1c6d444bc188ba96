"""History tokens: topological `t<depth>-<stream>`, stream `t<stream>` and sync `s...`."""

from __future__ import annotations

import pytest

from starling.errors import MatrixError
from starling.sync.tokens import HistoryPosition, parse_history_position, parse_room_position


@pytest.mark.parametrize(
    ("token", "position"),
    [
        ("t12-345", HistoryPosition(345, 12)),
        ("t3--7", HistoryPosition(-7, 3)),  # a backfilled event's negative position
        ("t42", HistoryPosition(42)),
        ("t-5", HistoryPosition(-5)),
        ("s99~receipts.3", HistoryPosition(99)),
    ],
)
def test_parse(token: str, position: HistoryPosition) -> None:
    assert parse_history_position(token) == position
    assert parse_room_position(token) == position.stream
    if not token.startswith("s"):
        assert position.encode() == token


@pytest.mark.parametrize(
    "token",
    [
        "t",
        "t1-",
        "t-1-2",
        "t1-2-3",
        "tx",
        "t1-x",
        "u5",
        "t" + "9" * 30,
        "t1-" + "9" * 25,
        "t9999999999999999999",
        "t1-9999999999999999999",
    ],
)
def test_garbage_is_a_400(token: str) -> None:
    with pytest.raises(MatrixError) as e:
        parse_history_position(token)
    assert e.value.status == 400 and e.value.errcode == "M_INVALID_PARAM"
