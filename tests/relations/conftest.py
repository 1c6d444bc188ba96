"""The relations tests' homeserver: the shared `hs` (both engines), with rate limits out of
the way (these tests send many events quickly on purpose)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starling.storage import Database
from tests.support.harness import Harness, make_harness

FAST = {"per_second": 1000, "burst_count": 1000}


@pytest.fixture
async def hs(database: Database, tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(
        database,
        tmp_path,
        rc_message=FAST,
        rc_joins={"local": FAST, "remote": FAST},
        rc_joins_per_room=FAST,
        rc_invites={"per_room": FAST, "per_user": FAST, "per_issuer": FAST},
    ) as harness:
        yield harness
