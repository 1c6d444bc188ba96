"""Fuzz: every token a client hands back (sync `since`, pagination `from`/`to`, search
`next_batch`, room directory `since`) is either refused with a MatrixError or parses to
positions the storage layer can hold (64-bit), and what we issue parses back to itself."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from starling.directory.service import _parse_token as parse_directory_token
from starling.errors import MatrixError
from starling.search.service import SearchToken
from starling.sync.tokens import SyncToken, pagination_token, parse_room_position
from tests.fuzz.strategies import BOUNDARY_INTS, NASTY_CHARS, fuzz_settings, texts

INT64 = range(-(2**63), 2**63)

digits = st.one_of(
    st.integers().map(str),
    BOUNDARY_INTS.map(str),
    BOUNDARY_INTS.map(str),
    st.integers(19, 5000).map(lambda n: "9" * n),
    st.text(alphabet="0123456789-+ \u00b2\u0663\u0e53_", max_size=25),
)
stream_names = st.sampled_from(
    ["receipts", "typing", "to_device", "device_lists", "A", "", "x" * 40, "a.b"]
)


@st.composite
def token_like(draw: st.DrawFn) -> str:
    """Near-misses of every token grammar we issue."""
    head = draw(st.sampled_from(["s", "t", "k", "n", "p", "", "S", "m"]))
    text = head + draw(digits)
    for _ in range(draw(st.integers(0, 3))):
        text += draw(st.sampled_from(["~", "_", "."])) + draw(stream_names) + "." + draw(digits)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["~!room:example.org", "_!room:example.org", "~x"]))
    if draw(st.integers(0, 4)) == 0:
        text += draw(NASTY_CHARS)
    return text


tokens = st.one_of(token_like(), texts, st.text(alphabet="st0123456789~._", max_size=2000))


@fuzz_settings(2)
@given(tokens)
@example("s9999999999999999999")
@example("s1~receipts.-9999999999999999999")
def test_sync_token(token: str) -> None:
    try:
        parsed = SyncToken.parse(token)
    except MatrixError:
        return
    assert parsed.events in INT64
    assert all(pos in INT64 for pos in parsed.streams.values())
    assert SyncToken.parse(parsed.encode()) == parsed


@fuzz_settings(2)
@given(tokens)
@example("t9999999999999999999")
@example("t\u00b2")
def test_pagination_token(token: str) -> None:
    try:
        position = parse_room_position(token)
    except MatrixError:
        return
    assert position in INT64
    assert parse_room_position(pagination_token(position)) == position


@fuzz_settings()
@given(tokens)
@example("t\u00b2")
@example("k" + "9" * 30)
def test_search_token(token: str) -> None:
    try:
        parsed = SearchToken.parse(token)
    except MatrixError:
        return
    assert parsed.value in INT64
    assert SearchToken.parse(parsed.encode()) == parsed


@fuzz_settings()
@given(tokens)
@example("n\u00b2_!room:example.org")
@example("n" + "9" * 5000 + "_!room:example.org")
def test_directory_token(token: str) -> None:
    try:
        _direction, (count, _room) = parse_directory_token(token)
    except MatrixError:
        return
    assert -count in INT64
