"""`allow_public_rooms_over_federation` (off by default, as in Synapse): other servers get
403 for our room directory, even with a valid signature, until the admin turns it on."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.federation.test_inbound_auth import PUBLIC_ROOMS, REMOTE, call, fed, remote_key
from tests.support.harness import Harness

__all__ = ["fed"]  # the fixture, imported for use here


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {"federation_domain_whitelist": [REMOTE]}


async def test_directory_closed_to_other_servers_by_default(hs: Harness, fed: TestClient) -> None:
    _, token = await hs.register("alice")
    room = await hs.create_room(token, visibility="public", name="Lobby")
    key = await remote_key(hs)
    status, body = await call(fed, "GET", PUBLIC_ROOMS, key=key)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    status, body = await call(fed, "POST", PUBLIC_ROOMS, key=key, body={"limit": 5})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    # Unsigned requests are still refused as unauthenticated first.
    assert (await call(fed, "GET", PUBLIC_ROOMS))[0] == 401
    # Our own users still see the room.
    status, body = await hs.request("GET", "/_matrix/client/v3/publicRooms", token)
    assert status == 200 and [r["room_id"] for r in body["chunk"]] == [room], body
