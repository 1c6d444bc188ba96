"""Power levels that are not integers: the auth rules refuse them (403 M_FORBIDDEN); a body
that is not the right shape at all is the client's error (400 M_BAD_JSON)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"

NOT_INTEGERS: list[dict[str, Any]] = [
    {"ban": "50"},
    {"users_default": True},
    {"events": {"m.room.name": "50"}},
    {"users": {"@x:test.local": "100"}},
    {"notifications": {"room": "50"}},
]
MALFORMED: list[dict[str, Any]] = [
    {"kick": 50.5},  # no float can be in an event (canonical JSON)
    {"ban": {"level": 50}},
    {"users": {"@x:test.local": None}},
    {"events": ["m.room.name"]},
    {"users": "everyone"},
    {"users": {"@x:test.local": {"level": 1}}},
    {"notifications": 5},
]


@pytest.mark.parametrize("override", NOT_INTEGERS + MALFORMED)
async def test_create_room_with_bad_power_level_override(
    hs: Harness, override: dict[str, Any]
) -> None:
    _, tok = await hs.register()
    status, resp = await hs.request(
        "POST", f"{V3}/createRoom", tok, {"power_level_content_override": override}
    )
    expected = (403, "M_FORBIDDEN") if override in NOT_INTEGERS else (400, "M_BAD_JSON")
    assert (status, resp.get("errcode")) == expected, resp


@pytest.mark.parametrize("change", NOT_INTEGERS + MALFORMED)
async def test_put_power_levels_with_bad_values(hs: Harness, change: dict[str, Any]) -> None:
    _, tok = await hs.register()
    room = await hs.create_room(tok)
    status, current = await hs.request("GET", f"{V3}/rooms/{room}/state/m.room.power_levels/", tok)
    assert status == 200
    status, resp = await hs.request(
        "PUT", f"{V3}/rooms/{room}/state/m.room.power_levels/", tok, {**current, **change}
    )
    expected = (403, "M_FORBIDDEN") if change in NOT_INTEGERS else (400, "M_BAD_JSON")
    assert (status, resp.get("errcode")) == expected, resp
