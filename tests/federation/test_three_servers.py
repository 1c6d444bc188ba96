"""The mission's scenario with three real `starling serve` processes over TLS, on SQLite and
PostgreSQL (tests/federation/harness.py, each behind its own proxy so the test can cut a
server off from the others' requests):

- Alice's room on a is joined from b and c over federation; messages cross.
- Bob (b) and Charlie (c) reply concurrently while b and c cannot reach each other: both
  replies cite Alice's message, so the graph forks; Alice's next message cites both.
- The netsplit heals: b and c fetch what they missed and all three servers have the same
  state and the same history.
- Bob and Charlie reply concurrently again with nobody cut off; Alice's next message
  merges whatever forked and the state still converges.
- A ban racing a topic change (all three cut off from each other while they happen)
  resolves identically on every server.
- An event forged in b's name (b's key ID, another key) inside a transaction b really
  signed is refused, and no server has it.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from starling.protocol.event_signing import hash_and_sign_event
from starling.protocol.hashing import compute_event_id
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SigningKey
from tests.federation.harness import (
    FederatedServer,
    User,
    eventually,
    federation_servers,
    signed_request,
)
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration

V3 = "/_matrix/client/v3"
# Hang guards only: how long a delivery or a heal may take before the test calls it lost.
DELIVERY_TIMEOUT = 60.0


async def has_event(server: FederatedServer, user: User, room_id: str, event_id: str) -> bool:
    status, _ = await server.client_request(
        "GET", f"{V3}/rooms/{quote(room_id)}/event/{quote(event_id)}", user.token
    )
    return status == 200


async def wait_events(server: FederatedServer, user: User, room_id: str, *event_ids: str) -> None:
    for event_id in event_ids:
        await eventually(
            lambda event_id=event_id: has_event(server, user, room_id, event_id),
            timeout=DELIVERY_TIMEOUT,
            what=f"{event_id} at {server.label}:\n{server.log_tail(3000)}",
        )


async def pdu(holder: FederatedServer, asker: FederatedServer, event_id: str) -> dict[str, Any]:
    """The event as `holder` serves it over federation to `asker` (signed as `asker`)."""
    status, body = await signed_request(
        holder,
        "GET",
        f"/_matrix/federation/v1/event/{event_id}",  # v4+ IDs need no escaping
        origin=asker.server_name,
        key=asker.signing_key(),
    )
    assert status == 200, (status, body, holder.log_tail(3000))
    event: dict[str, Any] = body["pdus"][0]
    return event


async def state_of(server: FederatedServer, user: User, room_id: str) -> dict[tuple[str, str], str]:
    return {(e["type"], e["state_key"]): e["event_id"] for e in await server.state(user, room_id)}


async def member_state(
    server: FederatedServer, user: User, room_id: str, target: str
) -> str | None:
    status, body = await server.client_request(
        "GET", f"{V3}/rooms/{quote(room_id)}/state/m.room.member/{quote(target)}", user.token
    )
    return body.get("membership") if status == 200 else None


async def converged(views: list[tuple[FederatedServer, User]], room_id: str) -> bool:
    states = [await state_of(server, user, room_id) for server, user in views]
    return all(s == states[0] for s in states[1:])


@pytest.mark.parametrize("engine", ENGINES)
async def test_three_servers_fork_merge_heal_and_race(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 3, engine=engine, proxy=True) as (a, b, c):
        assert a.forwarder and b.forwarder and c.forwarder
        alice = await a.register("alice")
        bob = await b.register("bob")
        bert = await b.register("bert")  # stays joined on b when bob is banned
        charlie = await c.register("charlie")
        room = await a.create_room(alice, preset="public_chat", name="Three servers")
        for server, user in ((b, bob), (b, bert), (c, charlie)):
            assert await server.join(user, room, via=[a.server_name]) == room
        views = [(a, alice), (b, bert), (c, charlie)]

        # Messages cross: every server has each one.
        m1 = await a.send_message(alice, room, "hello from a")
        m_c = await c.send_message(charlie, room, "hello from c")
        for server, user in views:
            await wait_events(server, user, room, m1, m_c)

        # The fork: b and c cannot reach each other (nor be reached by a) while Bob and
        # Charlie reply, so neither reply can cite the other.
        last = await a.send_message(alice, room, "who is there?")
        await wait_events(b, bob, room, last)
        await wait_events(c, charlie, room, last)
        await b.forwarder.stop()
        await c.forwarder.stop()
        reply_b = await b.send_message(bob, room, "bob here")
        reply_c = await c.send_message(charlie, room, "charlie here")
        got = await pdu(b, a, reply_b)
        extra = [await pdu(b, a, e) for e in got["prev_events"] if e != last]
        assert got["prev_events"] == [last], (extra, m1, m_c, last)
        assert (await pdu(c, a, reply_c))["prev_events"] == [last]
        # a hears both (it is reachable); Alice's next message merges the fork.
        await wait_events(a, alice, room, reply_b, reply_c)
        merge = await a.send_message(alice, room, "both of you, hi")
        assert sorted((await pdu(a, b, merge))["prev_events"]) == sorted([reply_b, reply_c])

        # The netsplit heals: b and c get the merge and fill the gap before it.
        await b.forwarder.start()
        await c.forwarder.start()
        await wait_events(b, bob, room, merge, reply_c)
        await wait_events(c, charlie, room, merge, reply_b)
        await eventually(
            lambda: converged(views, room), timeout=DELIVERY_TIMEOUT, what="state converges"
        )
        histories = [
            {e["event_id"] for e in await server.messages(user, room, limit=50)}
            for server, user in views
        ]
        assert histories[0] == histories[1] == histories[2]
        assert {m1, m_c, last, reply_b, reply_c, merge} <= histories[0]
        for server, user in views:
            newest = (await server.messages(user, room, limit=1))[0]
            assert newest["event_id"] == merge, server.label

        # Concurrent replies with every server reachable: delivered live, in whatever
        # order the transactions cross; the next message merges whatever forked.
        live = await asyncio.gather(
            b.send_message(bob, room, "bob again"), c.send_message(charlie, room, "charlie again")
        )
        for server, user in views:
            await wait_events(server, user, room, *live)
        merge_live = await a.send_message(alice, room, "and again")
        assert set((await pdu(a, b, merge_live))["prev_events"]) <= {merge, *live}
        for server, user in views:
            await wait_events(server, user, room, merge_live)
        await eventually(
            lambda: converged(views, room), timeout=DELIVERY_TIMEOUT, what="state converges"
        )

        # A ban racing a topic change. Bob becomes a moderator; then, with every server cut
        # off from the others, Alice bans Bob on a while Bob sets the topic on b.
        status, body = await a.client_request(
            "GET", f"{V3}/rooms/{quote(room)}/state/m.room.power_levels", alice.token
        )
        assert status == 200, body
        body["users"][bob.user_id] = 50
        status, resp = await a.client_request(
            "PUT", f"{V3}/rooms/{quote(room)}/state/m.room.power_levels", alice.token, body
        )
        assert status == 200, resp
        for server, user in views[1:]:
            await wait_events(server, user, room, resp["event_id"])
        for server in (a, b, c):
            assert server.forwarder is not None
            await server.forwarder.stop()
        status, ban = await a.client_request(
            "POST", f"{V3}/rooms/{quote(room)}/ban", alice.token, {"user_id": bob.user_id}
        )
        assert status == 200, ban
        status, topic = await b.client_request(
            "PUT",
            f"{V3}/rooms/{quote(room)}/state/m.room.topic",
            bob.token,
            {"topic": "bob's topic"},
        )
        assert status == 200, topic  # b does not know of the ban yet
        for server in (a, b, c):
            assert server.forwarder is not None
            await server.forwarder.start()

        async def ban_everywhere() -> bool:
            return all([await member_state(s, u, room, bob.user_id) == "ban" for s, u in views])

        await eventually(ban_everywhere, timeout=DELIVERY_TIMEOUT, what="the ban everywhere")
        await wait_events(c, charlie, room, topic["event_id"])  # c has both branches
        await eventually(
            lambda: converged(views, room), timeout=DELIVERY_TIMEOUT, what="state converges"
        )
        # The ban wins: Bob's concurrent topic is not part of the resolved state anywhere.
        assert ("m.room.topic", "") not in await state_of(a, alice, room)

        # A forged event: b's transaction is genuinely signed by b, but the event inside
        # claims b's key ID with another key. c refuses it and nobody stores it.
        template = await pdu(a, b, merge)
        forged = {
            k: v for k, v in template.items() if k not in ("signatures", "hashes", "unsigned")
        }
        forged.update(
            sender=bert.user_id,
            content={"msgtype": "m.text", "body": "forged"},
            prev_events=[merge],
            depth=template["depth"] + 1,
            origin_server_ts=template["origin_server_ts"] + 1,
        )
        room_version = get_room_version("12")
        b_key = b.signing_key()
        impostor = SigningKey.generate(b_key.key_id.split(":", 1)[1])
        forged = hash_and_sign_event(forged, b.server_name, impostor, room_version)
        forged_id = compute_event_id(forged, room_version)
        status, body = await signed_request(
            c,
            "PUT",
            f"/_matrix/federation/v1/send/{secrets.token_hex(8)}",
            origin=b.server_name,
            key=b_key,
            body={
                "origin": b.server_name,
                "origin_server_ts": forged["origin_server_ts"],
                "pdus": [forged],
            },
        )
        assert status == 200, body
        assert "error" in body["pdus"][forged_id], body
        for server, user in views:
            assert not await has_event(server, user, room, forged_id), server.label
