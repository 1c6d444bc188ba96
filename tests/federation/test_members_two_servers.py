"""Rooms shared by two real `starling serve` processes over TLS (tests/federation/harness.py),
on SQLite and PostgreSQL: a user of b joins a room of a by alias and by room ID with `via`,
messages flow both ways, a remote invite is accepted and another rejected, leaving works,
and b, stopped for 30 s while a's users talk, is caught up when it comes back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.federation.harness import FederatedServer, User, federation_servers
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30
V3 = "/_matrix/client/v3"


async def has_event(server: FederatedServer, user: User, room_id: str, event_id: str) -> bool:
    status, _ = await server.client_request(
        "GET", f"{V3}/rooms/{quote(room_id)}/event/{quote(event_id)}", user.token
    )
    return status == 200


async def wait_until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Poll `check()` (a coroutine function) until true; the timeout only detects a hang."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_event(server: FederatedServer, user: User, room_id: str, event_id: str) -> None:
    await wait_until(
        lambda: has_event(server, user, room_id, event_id),
        f"{event_id} at {server.label}:\n{server.log_tail(3000)}",
    )


async def membership(server: FederatedServer, user: User, room_id: str, target: str) -> str:
    status, body = await server.client_request(
        "GET", f"{V3}/rooms/{quote(room_id)}/state/m.room.member/{quote(target)}", user.token
    )
    return body.get("membership", "") if status == 200 and isinstance(body, dict) else ""


async def invited_rooms(server: FederatedServer, user: User) -> set[str]:
    status, body = await server.client_request("GET", f"{V3}/sync", user.token)
    assert status == 200, body
    return set(body.get("rooms", {}).get("invite", {}))


async def join(
    server: FederatedServer, user: User, target: str, via: list[str] | None = None
) -> tuple[int, Any]:
    params = {"via": via[0]} if via else None
    return await server.client_request(
        "POST", f"{V3}/join/{quote(target)}", user.token, {}, params=params, timeout=60
    )


@pytest.mark.parametrize("engine", ENGINES)
async def test_two_servers_share_rooms(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        room = await a.create_room(alice, preset="public_chat", room_alias_name="lobby")

        # bob joins a's room by its alias, resolved by asking a.
        status, body = await join(b, bob, f"#lobby:{a.server_name}")
        assert status == 200 and body["room_id"] == room, (body, b.log_tail(), a.log_tail())
        await wait_until(
            lambda: _is(membership(a, alice, room, bob.user_id), "join"), "bob's join at a"
        )

        # Messages both ways.
        hello = await a.send_message(alice, room, "hello bob")
        await wait_event(b, bob, room, hello)
        reply = await b.send_message(bob, room, "hi alice")
        await wait_event(a, alice, room, reply)

        # By room ID, through a server named with via.
        second = await a.create_room(alice, preset="public_chat")
        status, body = await join(b, bob, second, via=[a.server_name])
        assert status == 200 and body["room_id"] == second, body

        # A remote invite: a asks b to sign it, carol sees it in /sync and accepts.
        carol = await b.register("carol")
        private = await a.create_room(alice, preset="private_chat")
        status, body = await a.client_request(
            "POST", f"{V3}/rooms/{quote(private)}/invite", alice.token, {"user_id": carol.user_id}
        )
        assert status == 200, (body, a.log_tail(), b.log_tail())
        assert private in await invited_rooms(b, carol)
        status, body = await join(b, carol, private)
        assert status == 200, (body, b.log_tail())
        said = await b.send_message(carol, private, "thanks for the invite")
        await wait_event(a, alice, private, said)

        # A rejected invite: dave leaves without ever joining; a sees the leave.
        dave = await b.register("dave")
        status, body = await a.client_request(
            "POST", f"{V3}/rooms/{quote(private)}/invite", alice.token, {"user_id": dave.user_id}
        )
        assert status == 200, body
        status, body = await b.client_request(
            "POST", f"{V3}/rooms/{quote(private)}/leave", dave.token, {}
        )
        assert status == 200, (body, b.log_tail())
        await wait_until(
            lambda: _is(membership(a, alice, private, dave.user_id), "leave"), "dave's rejection"
        )
        assert private not in await invited_rooms(b, dave)

        # bob leaves the second room; a sees it.
        status, body = await b.client_request(
            "POST", f"{V3}/rooms/{quote(second)}/leave", bob.token, {}
        )
        assert status == 200, body
        await wait_until(
            lambda: _is(membership(a, alice, second, bob.user_id), "leave"), "bob's leave at a"
        )

        # b is down for 30 s while alice talks; once back it has every message quickly.
        await asyncio.to_thread(b.stop)
        missed = [await a.send_message(alice, room, f"while b was down {i}") for i in range(5)]
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(b.start)
        back = time.monotonic()
        for event_id in missed:
            await wait_event(b, bob, room, event_id)
        caught_up = time.monotonic() - back
        print(f"\ncatch-up after a {OUTAGE_SECONDS} s outage ({engine}): {caught_up:.2f} s")
        # And the room carries on both ways.
        after = await b.send_message(bob, room, "back again")
        await wait_event(a, alice, room, after)


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)
