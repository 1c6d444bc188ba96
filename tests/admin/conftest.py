"""Fixtures for the admin API tests: a homeserver (both engines) with generous login and
registration limits, and an admin with an access token."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

_GENEROUS = {"per_second": 1000, "burst_count": 1000}


CONFIG: dict[str, Any] = {
    **UNLIMITED_ROOM_RATES,
    "rc_registration": _GENEROUS,
    "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
}


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return dict(CONFIG)


@pytest.fixture
async def admin(hs: Harness) -> str:
    """An admin's access token."""
    _, token = await hs.register("root", admin=True)
    return token


async def set_password(hs: Harness, admin: str, user_id: str, password: str) -> None:
    status, resp = await hs.request(
        "PUT",
        f"/_synapse/admin/v2/users/{user_id}",
        admin,
        {"password": password, "logout_devices": False},
    )
    assert status in (200, 201), resp


async def login(hs: Harness, user: str, password: str) -> tuple[int, Any]:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    return await hs.request("POST", "/_matrix/client/v3/login", body=body)
