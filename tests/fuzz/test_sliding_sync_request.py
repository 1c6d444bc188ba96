"""Fuzz: a sliding sync request body from a hostile client (MSC4186, both shapes) is
refused only with a MatrixError, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from starling.errors import MatrixError
from starling.sync.sliding.request import parse_request
from tests.fuzz.strategies import fuzz_settings, json_values, texts

PAIRS = st.lists(
    st.lists(st.sampled_from(["*", "$LAZY", "$ME", "m.room.member", ""]) | texts, max_size=3),
    max_size=4,
)
VALUES = json_values(8) | PAIRS


@st.composite
def list_configs(draw: st.DrawFn) -> dict[str, Any]:
    keys = ["ranges", "range", "timeline_limit", "required_state", "filters", "slow_get_all_rooms"]
    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(keys), max_size=6)):
        out[key] = draw(VALUES)
    if draw(st.booleans()):
        out["timeline_limit"] = draw(st.integers(min_value=-2, max_value=1001))
    if draw(st.booleans()):
        out["ranges"] = draw(st.lists(st.lists(st.integers(-1, 5), max_size=3), max_size=3))
    if draw(st.booleans()):
        out["filters"] = {
            k: draw(VALUES)
            for k in draw(
                st.lists(
                    st.sampled_from(
                        [
                            "is_dm",
                            "is_encrypted",
                            "is_invite",
                            "room_types",
                            "not_room_types",
                            "spaces",
                            "tags",
                            "not_tags",
                            "is_invited",
                        ]
                    ),
                    max_size=4,
                )
            )
        }
    return out


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in draw(
        st.lists(
            st.sampled_from(
                [
                    "conn_id",
                    "pos",
                    "timeout",
                    "set_presence",
                    "lists",
                    "room_subscriptions",
                    "extensions",
                ]
            ),
            max_size=5,
        )
    ):
        out[key] = draw(VALUES)
    if draw(st.booleans()):
        out["lists"] = draw(st.dictionaries(texts, list_configs() | VALUES, max_size=3))
    if draw(st.booleans()):
        out["room_subscriptions"] = draw(
            st.dictionaries(
                st.sampled_from(["!a:x", "!b:y"]) | texts, list_configs() | VALUES, max_size=3
            )
        )
    if draw(st.booleans()):
        out["extensions"] = draw(
            st.dictionaries(
                st.sampled_from(["to_device", "e2ee", "account_data", "receipts", "typing"]),
                st.dictionaries(
                    st.sampled_from(["enabled", "since", "lists", "rooms", "limit"]), VALUES
                ),
            )
        )
    return out


@fuzz_settings(2)
@given(bodies(), st.none() | texts, st.none() | st.integers(0, 10**6))
def test_hostile_bodies_fail_only_with_matrix_errors(
    body: dict[str, Any], pos: str | None, timeout: int | None
) -> None:
    try:
        parse_request(
            body, user_id="@a:x", device_id="D", pos=pos, timeout_ms=timeout, set_presence=None
        )
    except MatrixError as e:
        assert e.status == 400
