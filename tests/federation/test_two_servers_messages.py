"""Two real `starling serve` processes over TLS: a user of b joins a room on a, messages
go both ways through /send and the receipt pipeline, and b's history before it joined
comes through backfill. (Three servers, forks and netsplits: test_three_servers.py.)"""

from __future__ import annotations

from pathlib import Path

from starling.protocol.event_signing import hash_and_sign_event
from starling.protocol.hashing import compute_event_id
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from starling.protocol.signing import SigningKey
from tests.federation.harness import eventually, federation_servers, signed_request


async def test_join_and_messages_both_ways(engine: str, tmp_path: Path) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        room_id = await a.create_room(alice, preset="public_chat")
        before = await a.send_message(alice, room_id, "before bob joined")
        assert await b.join(bob, room_id, via=[a.server_name]) == room_id

        hello = await a.send_message(alice, room_id, "hello bob")

        async def b_has(event_id: str) -> bool:
            return any(e["event_id"] == event_id for e in await b.messages(bob, room_id))

        await eventually(lambda: b_has(hello), what="alice's message on b")
        reply = await b.send_message(bob, room_id, "hi alice")

        async def a_has(event_id: str) -> bool:
            return any(e["event_id"] == event_id for e in await a.messages(alice, room_id))

        await eventually(lambda: a_has(reply), what="bob's reply on a")
        # History from before bob's server joined, backfilled from a by /messages.
        await eventually(lambda: b_has(before), what="backfilled history on b")
        a_state = {
            (e["type"], e["state_key"], e["event_id"]) for e in await a.state(alice, room_id)
        }
        b_state = {(e["type"], e["state_key"], e["event_id"]) for e in await b.state(bob, room_id)}
        assert a_state == b_state

        # A forged event: a's name and key ID, another key. The transaction is a's (its
        # X-Matrix signature is good); the PDU in it is dropped.
        a_key = a.signing_key()
        status, got = await signed_request(
            b,
            "GET",
            f"/_matrix/federation/v1/event/{hello}",  # URL-safe: sent as signed
            origin=a.server_name,
            key=a_key,
        )
        assert status == 200, got
        template = {k: v for k, v in got["pdus"][0].items() if k not in ("signatures", "hashes")}
        template["content"] = {"msgtype": "m.text", "body": "forged"}
        rv = KNOWN_ROOM_VERSIONS["12"]
        impostor = SigningKey.generate(a_key.key_id.partition(":")[2])
        forged = hash_and_sign_event(template, a.server_name, impostor, rv)
        forged_id = compute_event_id(forged, rv)
        status, answer = await signed_request(
            b,
            "PUT",
            "/_matrix/federation/v1/send/forgery",
            origin=a.server_name,
            key=a_key,
            body={"pdus": [forged], "edus": []},
        )
        assert status == 200, answer
        assert "signature" in answer["pdus"][forged_id]["error"]
        assert not await b_has(forged_id)
