"""Fuzz: sync filters from a hostile client — as stored JSON (POST /filter) and inline
query text (?filter=) — are refused only with a MatrixError, and an accepted filter
matches any event (however malformed) without raising."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from starling.errors import MatrixError
from starling.protocol.canonical_json import CanonicalJsonError, encode_canonical_json_lenient
from starling.rooms.client_format import only_fields
from starling.sync.filtering import parse_event_filter, parse_filter_json, parse_sync_filter
from tests.fuzz.strategies import fuzz_settings, json_values, texts

SECTION_KEYS = st.sampled_from(
    [
        "limit",
        "types",
        "not_types",
        "senders",
        "not_senders",
        "rooms",
        "not_rooms",
        "contains_url",
        "lazy_load_members",
        "include_redundant_members",
        "unread_thread_notifications",
        "org.matrix.msc3773.unread_thread_notifications",
    ]
)
GLOBS = st.lists(st.text(alphabet="ab*?.[]\\^$(){}|+m", max_size=12) | texts, max_size=4)


@st.composite
def event_filters(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in draw(st.lists(SECTION_KEYS, max_size=5)):
        if key in ("types", "not_types"):
            out[key] = draw(GLOBS | json_values())
        elif key in ("senders", "not_senders", "rooms", "not_rooms"):
            out[key] = draw(
                st.lists(st.sampled_from(["@a:b", "!r:b", "x", ""]) | texts, max_size=3)
                | json_values()
            )
        else:
            out[key] = draw(json_values() | st.floats() | st.integers())
    return out


@st.composite
def sync_filters(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values())
    room: dict[str, Any] = {}
    for section in draw(
        st.lists(
            st.sampled_from(
                [
                    "timeline",
                    "state",
                    "ephemeral",
                    "account_data",
                    "rooms",
                    "not_rooms",
                    "include_leave",
                ]
            ),
            max_size=4,
        )
    ):
        room[section] = draw(event_filters() | json_values())
    out: dict[str, Any] = {"room": room}
    for key in draw(
        st.lists(
            st.sampled_from(["presence", "account_data", "event_format", "event_fields", "room"]),
            max_size=3,
        )
    ):
        if key == "event_fields":
            out[key] = draw(
                st.lists(st.text(alphabet="ab.\\c", max_size=8), max_size=4) | json_values()
            )
        else:
            out[key] = draw(event_filters() | json_values())
    return out


events = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": texts | json_values(),
            "sender": texts | json_values(),
            "content": json_values(),
            "state_key": json_values(),
        },
    ),
    max_size=4,
)


def _use(obj: Any, sample: list[dict[str, Any]]) -> None:
    try:
        f = parse_sync_filter(obj)
    except MatrixError:
        return
    for section in (
        f.timeline,
        f.state,
        f.ephemeral,
        f.room_account_data,
        f.presence,
        f.account_data,
    ):
        section.filter_json(sample, "!room:example.org")
        for event in sample:
            etype = event.get("type")
            if isinstance(etype, str):
                section.matches(
                    etype,
                    "@a:b",
                    "!r:b",
                    event.get("content") if isinstance(event.get("content"), dict) else None,
                )
    f.includes_room("!room:example.org")
    _ = (f.timeline_limit, f.lazy_load_members)
    if f.event_fields is not None:
        for event in sample:
            only_fields(event, f.event_fields)


@fuzz_settings()
@given(sync_filters(), events)
def test_stored_filter(obj: Any, sample: list[dict[str, Any]]) -> None:
    _use(obj, sample)


@fuzz_settings()
@given(sync_filters() | texts, events)
def test_inline_filter_text(obj: Any, sample: list[dict[str, Any]]) -> None:
    if isinstance(obj, str):
        text = obj
    else:
        try:
            text = encode_canonical_json_lenient(obj).decode("utf-8", "surrogatepass")
        except (CanonicalJsonError, UnicodeDecodeError):
            return
    try:
        value = parse_filter_json(text)
    except MatrixError:
        return
    _use(value, sample)


@fuzz_settings()
@given(event_filters() | json_values())
def test_room_event_filter(obj: Any) -> None:
    """A RoomEventFilter alone, as /messages and /search take it."""
    if not isinstance(obj, dict):
        return
    try:
        f = parse_event_filter(obj, "filter.")
    except MatrixError:
        return
    f.matches("m.room.message", "@a:b", "!r:b", {"url": "mxc://a/b"})
