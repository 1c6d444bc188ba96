"""Filter patterns are user input: many `*`s against a long event type must not make
matching backtrack (the type patterns of /sync filters and of the ephemeral/account-data
sections)."""

from __future__ import annotations

from starling.sync.filtering import parse_event_filter, parse_sync_filter
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
    event = {"type": LONG_TYPE}
    types = parse_sync_filter({"account_data": {"types": [HOSTILE]}}).account_data
    assert finishes(lambda: types.matches_json(event)) is False
    not_types = parse_sync_filter({"room": {"ephemeral": {"not_types": [HOSTILE]}}}).ephemeral
    assert finishes(lambda: not_types.matches_json(event, "!r:x")) is True
