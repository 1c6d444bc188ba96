"""These tests make rooms and send messages quickly on purpose: rate limits out of the way."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import UNLIMITED_ROOM_RATES


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return UNLIMITED_ROOM_RATES
