"""Power levels: value forms per room version (the spec's power_levels.* vectors),
defaults, creators, and the parsed view."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starling.protocol.event import Event
from starling.protocol.power_levels import (
    InvalidPowerLevel,
    PowerLevels,
    creators,
    is_valid_user_id,
    parse_power_level_value,
)
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from tests.protocol.vectors import vectors

ALL_VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
ALICE, BOB, CAROL = "@alice:example.org", "@bob:example.org", "@carol:example.org"


def _create(rv: RoomVersion, sender: str = ALICE, **content: Any) -> Event:
    pdu = {"type": "m.room.create", "state_key": "", "sender": sender, "content": content}
    if not rv.room_id_from_create_event:
        pdu["room_id"] = "!r:example.org"
    return Event(pdu, "$create", rv)


def _pl(rv: RoomVersion, content: Any) -> Event:
    pdu = {"type": "m.room.power_levels", "state_key": "", "sender": ALICE, "content": content}
    return Event(pdu, "$pl", rv)


# --- vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", vectors("power_levels.string_values"), ids=lambda v: v["id"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_string_values(vector: dict[str, Any], version: str) -> None:
    rv = get_room_version(version)
    for text, expected in zip(vector["input"], vector["expected"], strict=True):
        if version in vector["room_versions"]:
            assert parse_power_level_value(text, rv) == expected
        else:
            with pytest.raises(InvalidPowerLevel):
                parse_power_level_value(text, rv)


@pytest.mark.parametrize("vector", vectors("power_levels.float_values"), ids=lambda v: v["id"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_float_values(vector: dict[str, Any], version: str) -> None:
    rv = get_room_version(version)
    for text, expected in zip(vector["input"], vector["expected"], strict=True):
        number = json.loads(text)  # the vector gives the JSON number literal
        assert isinstance(number, float)
        if version in vector["room_versions"]:
            assert parse_power_level_value(number, rv) == expected
        else:
            with pytest.raises(InvalidPowerLevel):
                parse_power_level_value(number, rv)
        # A float written as a string is neither form.
        with pytest.raises(InvalidPowerLevel):
            parse_power_level_value(text, rv)


# --- value forms -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_integers_always_accepted(version: str) -> None:
    rv = get_room_version(version)
    for value in (0, 100, -5, 2**53 - 1):
        assert parse_power_level_value(value, rv) == value


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    "value",
    [True, False, None, [], {}, "", " ", "abc", "1.5", "1e3", "1_000", "++1", "+-1", "٣", "0x10"],
)
def test_never_accepted(version: str, value: Any) -> None:
    with pytest.raises(InvalidPowerLevel):
        parse_power_level_value(value, get_room_version(version))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_rejected(value: float) -> None:
    with pytest.raises(InvalidPowerLevel):
        parse_power_level_value(value, get_room_version("1"))


def test_float_truncates_toward_zero() -> None:
    v1 = get_room_version("1")
    assert parse_power_level_value(-50.9, v1) == -50
    assert parse_power_level_value(1e2, v1) == 100


@given(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.integers())
    )
)
def test_parse_raises_only_invalid_power_level(value: Any) -> None:
    for version in ("1", "6", "10"):
        try:
            result = parse_power_level_value(value, get_room_version(version))
        except InvalidPowerLevel:
            continue
        assert type(result) is int


# --- creators --------------------------------------------------------------------------


def test_creators_per_version() -> None:
    v1, v10, v11, v12 = (get_room_version(v) for v in ("1", "10", "11", "12"))
    # Rooms 1-10 name the creator in content.creator, which the rules use.
    assert creators(_create(v1, creator=BOB)) == {BOB}
    assert creators(_create(v10, sender=ALICE, creator=ALICE)) == {ALICE}
    assert creators(_create(v10, creator=5)) == frozenset()
    assert creators(_create(v11, creator=BOB)) == {ALICE}
    assert creators(_create(v12, additional_creators=[BOB, CAROL])) == {ALICE, BOB, CAROL}
    assert creators(_create(v12, additional_creators="nope")) == {ALICE}
    assert creators(_create(v11, additional_creators=[BOB])) == {ALICE}


def test_is_valid_user_id() -> None:
    for good in (ALICE, "@a:1.2.3.4:8448", "@a:[::1]", "@Historic Name:example.org", "@:x.org"):
        assert is_valid_user_id(good), good
    for bad in (
        "alice",
        "@alice",
        "@a:",
        "@a:exa mple.org",
        "@a\x00:x.org",
        5,
        None,
        "@a:x" + "y" * 260,
    ):
        assert not is_valid_user_id(bad), bad


# --- the parsed view ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_defaults_without_power_levels_event(version: str) -> None:
    rv = get_room_version(version)
    pl = PowerLevels.from_state(_create(rv, creator=ALICE), None, rv)
    assert (pl.users_default, pl.events_default, pl.state_default) == (0, 0, 50)
    assert (pl.invite, pl.kick, pl.ban, pl.redact) == (0, 50, 50, 50)
    assert pl.notification_level("room") == 50
    assert pl.event_level("m.room.message", False) == 0
    assert pl.event_level("m.room.topic", True) == 50
    assert pl.user_level(BOB) == 0
    expected = math.inf if rv.privileged_creators else 100
    assert pl.user_level(ALICE) == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_explicit_levels(version: str) -> None:
    rv = get_room_version(version)
    content = {
        "users": {BOB: 75},
        "users_default": 5,
        "events": {"m.room.name": 60, "m.reaction": 3},
        "events_default": 1,
        "state_default": 40,
        "invite": 10,
        "kick": 20,
        "ban": 30,
        "redact": 35,
        "notifications": {"room": 70},
    }
    pl = PowerLevels.from_state(_create(rv, creator=ALICE), _pl(rv, content), rv)
    assert pl.user_level(BOB) == 75
    assert pl.user_level(CAROL) == 5
    # With a power-levels event the creator has no implicit 100 - except in room 12+.
    assert pl.user_level(ALICE) == (math.inf if rv.privileged_creators else 5)
    assert pl.event_level("m.room.name", True) == 60
    assert pl.event_level("m.reaction", False) == 3
    assert pl.event_level("m.room.topic", True) == 40
    assert pl.event_level("m.room.message", False) == 1
    assert (pl.invite, pl.kick, pl.ban, pl.redact) == (10, 20, 30, 35)
    assert pl.notification_level("room") == 70
    assert pl.has_event


def test_lenient_reading_per_version() -> None:
    content = {"users": {BOB: "60", CAROL: 12.7}, "kick": "30", "ban": [1], "events": "x"}
    v1, v6, v10 = (get_room_version(v) for v in ("1", "6", "10"))
    pl1 = PowerLevels.from_state(_create(v1, creator=ALICE), _pl(v1, content), v1)
    assert (pl1.user_level(BOB), pl1.user_level(CAROL), pl1.kick, pl1.ban) == (60, 12, 30, 50)
    assert pl1.event_level("m.room.name", True) == 50
    pl6 = PowerLevels.from_state(_create(v6, creator=ALICE), _pl(v6, content), v6)
    assert (pl6.user_level(BOB), pl6.user_level(CAROL), pl6.kick) == (60, 0, 30)
    pl10 = PowerLevels.from_state(_create(v10, creator=ALICE), _pl(v10, content), v10)
    assert (pl10.user_level(BOB), pl10.kick) == (0, 50)


def test_v12_creators_infinite_even_if_listed() -> None:
    v12 = get_room_version("12")
    create = _create(v12, additional_creators=[BOB])
    pl = PowerLevels.from_state(create, _pl(v12, {"users": {BOB: 1, CAROL: 99}}), v12)
    assert pl.user_level(ALICE) == math.inf
    assert pl.user_level(BOB) == math.inf
    assert pl.user_level(CAROL) == 99


def test_no_create_event_means_no_creators() -> None:
    v6 = get_room_version("6")
    pl = PowerLevels.from_state(None, None, v6)
    assert pl.user_level(ALICE) == 0
    assert pl.creators == frozenset()


def test_malformed_content_is_read_with_defaults() -> None:
    v1 = get_room_version("1")
    contents: list[Any] = [[], "x", 5, None, {"users": [1, 2]}, {"notifications": {"room": None}}]
    for content in contents:
        pl = PowerLevels.from_state(_create(v1, creator=ALICE), _pl(v1, content), v1)
        assert pl.user_level(BOB) == 0
        assert pl.notification_level("room") == 50


def test_power_levels_change_error() -> None:
    from starling.protocol.power_levels import power_levels_change_error

    v6, v10, v12 = (get_room_version(v) for v in ("6", "10", "12"))
    current = {"users": {ALICE: 100, BOB: 50}, "ban": 50}
    none = frozenset[str]()
    # Absent on one side is not compared: bob may add a kick level within his own.
    assert power_levels_change_error({**current, "kick": 40}, current, BOB, 50, none, v6) is None
    assert "kick" in str(
        power_levels_change_error({**current, "kick": 60}, current, BOB, 50, none, v6)
    )
    # Own entry may go down; others at the sender's level may not be touched.
    assert (
        power_levels_change_error(
            {"users": {ALICE: 100, BOB: 0}, "ban": 50}, current, BOB, 50, none, v6
        )
        is None
    )
    demote = {"users": {ALICE: 100, BOB: 50, CAROL: 0}, "ban": 50}
    with_carol = {"users": {ALICE: 100, BOB: 50, CAROL: 50}, "ban": 50}
    assert "not below" in str(power_levels_change_error(demote, with_carol, BOB, 50, none, v6))
    # Same value in another form is no change (rooms 1-9).
    assert (
        power_levels_change_error(
            {"users": {ALICE: "100", BOB: 50}, "ban": " 50"}, current, BOB, 50, none, v6
        )
        is None
    )
    assert (
        power_levels_change_error({"users": {ALICE: "100"}}, None, ALICE, 100, none, v10)
        is not None
    )
    # Room 12: creators are never listed, and an infinite sender can grant any integer.
    creators_ = frozenset({ALICE})
    assert "creator" in str(
        power_levels_change_error({"users": {ALICE: 100}}, None, ALICE, math.inf, creators_, v12)
    )
    assert (
        power_levels_change_error(
            {"users": {BOB: 2**53 - 1}}, {"users": {}}, ALICE, math.inf, creators_, v12
        )
        is None
    )
