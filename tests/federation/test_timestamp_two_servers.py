"""/timestamp_to_event across two real servers: a server that joined late answers from
history it never had by asking the room's other server, and pulls the event in so that
/context works; the federation endpoint answers servers in the room only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.federation.harness import (
    FederatedServer,
    User,
    eventually,
    federation_servers,
    signed_request,
)
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration


async def ts_of(server: FederatedServer, user: User, room_id: str, event_id: str) -> int:
    status, body = await server.client_request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/event/{quote(event_id)}", user.token
    )
    assert status == 200, body
    ts: int = body["origin_server_ts"]
    return ts


async def lookup(
    server: FederatedServer, user: User, room_id: str, ts: int, direction: str
) -> tuple[int, dict[str, object]]:
    status, body = await server.client_request(
        "GET",
        f"/_matrix/client/v1/rooms/{room_id}/timestamp_to_event",
        user.token,
        params={"ts": str(ts), "dir": direction},
    )
    return status, body


@pytest.mark.parametrize("engine", ENGINES)
async def test_timestamp_to_event_asks_the_other_server(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice, bob = await a.register("alice"), await b.register("bob")
        room_id = await a.create_room(alice, preset="public_chat")
        early1 = await a.send_message(alice, room_id, "early 1")
        await asyncio.sleep(0.02)
        early2 = await a.send_message(alice, room_id, "early 2")
        t1, t2 = await ts_of(a, alice, room_id, early1), await ts_of(a, alice, room_id, early2)
        await asyncio.sleep(0.02)
        assert await b.join(bob, room_id, via=[a.server_name]) == room_id

        # b holds nothing of the room's timeline before bob's join, next to that gap:
        # it asks a, and pulls the answer in.
        status, body = await lookup(b, bob, room_id, t1, "f")
        assert (status, body) == (200, {"event_id": early1, "origin_server_ts": t1}), (
            body,
            b.log_tail(),
        )
        status, body = await lookup(b, bob, room_id, t2, "b")
        assert (status, body) == (200, {"event_id": early2, "origin_server_ts": t2}), body
        status, context = await b.client_request(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/context/{quote(early1)}", bob.token
        )
        assert status == 200 and context["event"]["content"]["body"] == "early 1", context
        # Nothing before the room began, on either server.
        status, body = await lookup(b, bob, room_id, 1000, "b")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", body

        # The federation endpoint: servers in the room only, signed requests only.
        path = f"/_matrix/federation/v1/timestamp_to_event/{room_id}?ts={t2}&dir=b"
        status, body = await signed_request(
            a, "GET", path, origin=b.server_name, key=b.signing_key()
        )
        assert (status, body) == (200, {"event_id": early2, "origin_server_ts": t2})
        status, body = await a.federation_get(path)
        assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"
        await b.client_request("POST", f"/_matrix/client/v3/rooms/{room_id}/leave", bob.token, {})

        async def left() -> bool:
            status, _ = await signed_request(
                a, "GET", path, origin=b.server_name, key=b.signing_key()
            )
            return status == 403

        await eventually(left, timeout=30, what="b's leave reaching a")
        status, body = await signed_request(
            a,
            "GET",
            f"/_matrix/federation/v1/timestamp_to_event/{room_id}?ts=1&dir=sideways",
            origin=b.server_name,
            key=b.signing_key(),
        )
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
