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

from tests.federation.harness import FederatedServer, User, federation_servers, signed_request
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
        await wait_until(lambda: _has(invited_rooms(b, dave), private), "dave's invite")
        status, synced = await b.client_request("GET", f"{V3}/sync", dave.token)
        assert status == 200, synced
        status, body = await b.client_request(
            "POST", f"{V3}/rooms/{quote(private)}/leave", dave.token, {}
        )
        assert status == 200, (body, b.log_tail())
        await wait_until(
            lambda: _is(membership(a, alice, private, dave.user_id), "leave"), "dave's rejection"
        )
        assert private not in await invited_rooms(b, dave)
        # Dave's own /sync shows the room left, with his (out-of-band) leave to show.
        since = quote(synced["next_batch"])
        status, body = await b.client_request("GET", f"{V3}/sync?since={since}", dave.token)
        assert status == 200, body
        timeline = body["rooms"]["leave"][private]["timeline"]["events"]
        assert [(e["type"], e["content"]["membership"]) for e in timeline] == [
            ("m.room.member", "leave")
        ]

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


async def _has(values: Any, wanted: str) -> bool:
    return wanted in await values


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def synced_rooms(server: FederatedServer, user: User, section: str) -> set[str]:
    status, body = await server.client_request("GET", f"{V3}/sync", user.token)
    assert status == 200, body
    return set(body.get("rooms", {}).get(section, {}))


@pytest.mark.parametrize("engine", ENGINES)
async def test_knocks_and_restricted_joins_across_servers(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        carol = await b.register("carol")

        # bob knocks on a's room through a; alice lets him in with an invite.
        knockable = await a.create_room(
            alice,
            preset="private_chat",
            room_version="10",
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        status, body = await b.client_request(
            "POST",
            f"{V3}/knock/{quote(knockable)}",
            bob.token,
            {"reason": "let me in"},
            params={"via": a.server_name},
        )
        assert status == 200, (body, b.log_tail(), a.log_tail())
        await wait_until(
            lambda: _is(membership(a, alice, knockable, bob.user_id), "knock"), "bob's knock"
        )
        assert knockable in await synced_rooms(b, bob, "knock")
        status, body = await a.client_request(
            "POST", f"{V3}/rooms/{quote(knockable)}/invite", alice.token, {"user_id": bob.user_id}
        )
        assert status == 200, body
        status, body = await join(b, bob, knockable)
        assert status == 200, (body, b.log_tail())
        # carol knocks too, then thinks better of it: the retraction reaches a.
        status, body = await b.client_request(
            "POST", f"{V3}/knock/{quote(knockable)}", carol.token, {}, params={"via": a.server_name}
        )
        assert status == 200, body
        status, body = await b.client_request(
            "POST", f"{V3}/rooms/{quote(knockable)}/leave", carol.token, {}
        )
        assert status == 200, (body, b.log_tail())
        await wait_until(
            lambda: _is(membership(a, alice, knockable, carol.user_id), "leave"), "retraction"
        )

        # A restricted room admits members of a room bob is in; a signs as authoriser.
        space = await a.create_room(alice, preset="public_chat", room_version="10")
        status, body = await join(b, bob, space, via=[a.server_name])
        assert status == 200, body
        restricted = await a.create_room(
            alice,
            preset="private_chat",
            room_version="10",
            initial_state=[
                {
                    "type": "m.room.join_rules",
                    "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{"type": "m.room_membership", "room_id": space}],
                    },
                }
            ],
        )
        status, body = await join(b, bob, restricted, via=[a.server_name])
        assert status == 200, (body, b.log_tail(), a.log_tail())
        status, member = await a.client_request(
            "GET",
            f"{V3}/rooms/{quote(restricted)}/state/m.room.member/{quote(bob.user_id)}",
            alice.token,
        )
        assert status == 200 and member["membership"] == "join", member
        assert member["join_authorised_via_users_server"] == alice.user_id
        # carol is in no room that admits her: refused, and not a member at a.
        status, body = await join(b, carol, restricted, via=[a.server_name])
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        assert await membership(a, alice, restricted, carol.user_id) == ""

        # Over the wire, a signs only what it should for b.
        key = b.signing_key()
        # (IDs unescaped in these paths: '!', '@' and ':' are path characters, and the
        # signature covers the path exactly as sent.)
        status, body = await signed_request(
            a,
            "GET",
            f"/_matrix/federation/v1/make_join/{space}/{alice.user_id}?ver=10",
            origin=b.server_name,
            key=key,
        )
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body  # not b's user
        status, made = await signed_request(
            a,
            "GET",
            f"/_matrix/federation/v1/make_join/{space}/{carol.user_id}?ver=10",
            origin=b.server_name,
            key=key,
        )
        assert status == 200 and made["room_version"] == "10", made
        not_a_join = {**made["event"], "content": {"membership": "ban"}}
        status, body = await signed_request(
            a,
            "PUT",
            f"/_matrix/federation/v2/send_join/{space}/$whatever",
            origin=b.server_name,
            key=key,
            body=not_a_join,
        )
        # Unsigned: refused as a failed signature check before its shape is looked at
        # (tests/federation/test_membership_resident.py covers signed wrong shapes).
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
