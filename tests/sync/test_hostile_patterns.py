"""Filter patterns are user input: many `*`s against a long event type must not make
matching backtrack (the type patterns of /sync filters and of the ephemeral/account-data
sections)."""

from __future__ import annotations

from starling.sync.filtering import parse_event_filter
from starling.sync.sections import filter_allows
from tests.support.hang_guard import finishes

HOSTILE = "*a*a*a*a*a*a*a*a*a*a*a*a*b"
LONG_TYPE = "a" * 250  # event types are at most 255 bytes


def test_sync_filter_type_patterns_do_not_backtrack() -> None:
    types = parse_event_filter({"types": [HOSTILE]})
    assert finishes(lambda: types.matches(LONG_TYPE)) is False
    not_types = parse_event_filter({"not_types": [HOSTILE]})
    assert finishes(lambda: not_types.matches(LONG_TYPE)) is True
    assert finishes(lambda: types.matches(LONG_TYPE + "b")) is True


def test_section_filter_type_patterns_do_not_backtrack() -> None:
    flt = {"types": [HOSTILE]}
    assert finishes(lambda: filter_allows(flt, LONG_TYPE)) is False
    assert finishes(lambda: filter_allows({"not_types": [HOSTILE]}, LONG_TYPE)) is True
