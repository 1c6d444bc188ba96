"""Fixtures for the accounts API tests: a homeserver with registration open and rate
limits generous enough that only the rate-limit tests meet them (both engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from starling.storage import Database
from tests.support.harness import Harness, make_harness

R = "/_matrix/client/v3"
PASSWORD = "correct horse battery staple"

_GENEROUS = {"per_second": 1000, "burst_count": 1000}
OPEN = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "rc_registration": _GENEROUS,
    "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
}

HarnessFactory = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture
def make_hs(database: Database, tmp_path: Path) -> HarnessFactory:
    """``async with make_hs(**config_overrides) as hs`` — a harness with OPEN plus the
    overrides, on this test's database."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[Harness]:
        return make_harness(database, tmp_path, **{**OPEN, **overrides})

    return factory


@pytest.fixture
async def ohs(make_hs: HarnessFactory) -> AsyncIterator[Harness]:
    """A homeserver with open registration."""
    async with make_hs() as harness:
        yield harness


async def register(
    hs: Harness, username: str, password: str = PASSWORD, **extra: Any
) -> dict[str, Any]:
    """Register through the API (nio-style one-shot dummy auth); returns the response."""
    body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
    status, resp = await hs.request("POST", f"{R}/register", body={**body, **extra})
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


async def login(hs: Harness, user: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    status, resp = await hs.request("POST", f"{R}/login", body={**body, **extra})
    assert status == 200, resp
    result: dict[str, Any] = resp
    return result


def password_auth(user_id: str, session: str | None, password: str = PASSWORD) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth
