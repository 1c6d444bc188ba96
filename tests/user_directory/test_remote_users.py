"""The user directory finds other servers' users (two real servers, tests/federation/
harness.py, on SQLite and PostgreSQL): while they share a room this server is in, with
the profile of their member event in a public room; a private room's nickname is not
indexed; once this server left the room, they are gone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.federation.harness import FederatedServer, User, eventually, federation_servers
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

V3 = "/_matrix/client/v3"


async def search(server: FederatedServer, user: User, term: str) -> list[str]:
    status, body = await server.client_request(
        "POST", f"{V3}/user_directory/search", user.token, {"search_term": term}
    )
    assert status == 200, body
    return [r["user_id"] for r in body["results"]]


async def set_name(server: FederatedServer, user: User, name: str) -> None:
    status, body = await server.client_request(
        "PUT", f"{V3}/profile/{quote(user.user_id)}/displayname", user.token, {"displayname": name}
    )
    assert status == 200, body


async def leave(server: FederatedServer, user: User, room_id: str) -> None:
    status, body = await server.client_request(
        "POST", f"{V3}/rooms/{quote(room_id)}/leave", user.token, {}
    )
    assert status == 200, body


@pytest.mark.parametrize("engine", ENGINES)
async def test_remote_users_in_the_directory(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        carol = await a.register("carol")
        bob = await b.register("bob")
        await set_name(a, alice, "Zebediah Quux")
        public = await a.create_room(alice, preset="public_chat")
        await b.join(bob, public, via=[a.server_name])

        def found(user: str, term: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return user in await search(b, bob, term)

            return check

        # By the display name of her member event in the public room.
        await eventually(found(alice.user_id, "zebediah"), what="alice found")
        assert await search(b, bob, "quux") == [alice.user_id]

        # A private room shared with b's user: carol is found by user ID, not by the
        # nickname her member event carries there.
        private = await a.create_room(carol, preset="private_chat")
        await a.invite(carol, private, bob.user_id)
        status, body = await a.client_request(
            "PUT",
            f"{V3}/rooms/{quote(private)}/state/m.room.member/{quote(carol.user_id)}",
            carol.token,
            {"membership": "join", "displayname": "Secret Nickname"},
        )
        assert status == 200, body
        await eventually(
            lambda: _invited(b, bob, private), what="the invite to reach b", timeout=60
        )
        await b.join(bob, private, via=[a.server_name])
        await eventually(found(carol.user_id, "carol"), what="carol found")
        assert carol.user_id not in await search(b, bob, "secret")

        # b leaves the public room: alice, in no other room with b, is gone at once
        # (b's record still says she is joined, but b is no longer in the room).
        await leave(b, bob, public)
        assert alice.user_id not in await search(b, bob, "zebediah")
        assert carol.user_id in await search(b, bob, "carol")


async def _invited(server: FederatedServer, user: User, room_id: str) -> bool:
    status, body = await server.client_request("GET", f"{V3}/sync", user.token)
    return status == 200 and room_id in body.get("rooms", {}).get("invite", {})
