"""The remote device-list cache between two real `starling serve` processes over TLS
(both engines). Server b sits behind a proxy that the test can cut (a netsplit), so what
a answers about b's user while b is unreachable is what a has cached.

- a's user queries b's user: a starts tracking them and fills its cache from
  /user/devices; with b cut off, a still answers (from the cache);
- an `m.device_list_update` with a prev_id a never saw (a gap, signed as b): a marks the
  cache stale and resyncs from b, so the device the bogus update named never shows;
- a new device on b is seen by a (chain applied), so is its new name, a deleted device
  disappears, a cross-signing reset on b is seen on a - each answered by a while b is
  cut off;
- a's user signs b's user's master key (cross-user verification across servers);
- b restarts: the update chain goes on from the stored head;
- an update made while a is down reaches a after b restarted (b's stored outbox);
- once b's user shares no room with a's users, a forgets his list.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from tests.e2ee.support import CrossSigning, Device, sign
from tests.federation.harness import (
    FederatedServer,
    User,
    eventually,
    federation_servers,
    signed_request,
)
from tests.federation.test_device_lists_two_servers import (
    PASSWORD,
    V3,
    login,
    upload_keys,
)


async def with_auth(
    server: FederatedServer, method: str, path: str, user: User, body: dict[str, Any]
) -> tuple[int, Any]:
    """A request that may need user-interactive auth (the password stage)."""
    status, resp = await server.client_request(method, path, user.token, body)
    if status != 401:
        return status, resp
    localpart = user.user_id[1:].split(":", 1)[0]
    body = {
        **body,
        "auth": {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
            "session": resp["session"],
        },
    }
    return await server.client_request(method, path, user.token, body)


async def query(a: FederatedServer, alice: User, user_id: str, timeout_ms: int) -> Any:
    status, body = await a.client_request(
        "POST",
        f"{V3}/keys/query",
        alice.token,
        {"device_keys": {user_id: []}, "timeout": timeout_ms},
    )
    assert status == 200, body
    return body


async def cached_answer(
    a: FederatedServer, b: FederatedServer, alice: User, bob: User, what: str, check: Any
) -> dict[str, Any]:
    """a's /keys/query answer for bob once it comes from a's cache (b cut off) and
    `check(answer)` holds."""
    assert b.forwarder is not None
    found: dict[str, Any] = {}

    async def answered_from_cache() -> bool:
        assert b.forwarder is not None
        await b.forwarder.stop()
        try:
            body = await query(a, alice, bob.user_id, 1000)
        finally:
            await b.forwarder.start()
        if body["failures"] or bob.user_id not in body["device_keys"] or not check(body):
            return False
        found.update(body)
        return True

    await eventually(answered_from_cache, timeout=60, what=what)
    return found


async def send_edu(a: FederatedServer, b: FederatedServer, edu: dict[str, Any]) -> None:
    """A transaction signed as b, carrying one EDU, straight to a."""
    txn = secrets.token_hex(8)
    status, body = await signed_request(
        a,
        "PUT",
        f"/_matrix/federation/v1/send/{txn}",
        origin=b.server_name,
        key=b.signing_key(),
        body={
            "origin": b.server_name,
            "origin_server_ts": int(time.time() * 1000),
            "pdus": [],
            "edus": [edu],
        },
    )
    assert status == 200, body


async def test_remote_device_lists_are_cached_and_resynced(engine: str, tmp_path: Any) -> None:
    async with federation_servers(tmp_path, 2, engine=engine, proxy=[False, True]) as (a, b):
        try:
            await _flow(a, b)
        except BaseException:
            print(f"--- a ---\n{a.log_tail()}\n--- b ---\n{b.log_tail()}")
            raise


async def _flow(a: FederatedServer, b: FederatedServer) -> None:
    alice = await a.register("alice")
    bob = await b.register("bob")
    room_id = await a.create_room(alice, preset="public_chat")
    assert await b.join(bob, room_id, via=[a.server_name]) == room_id
    phone = await upload_keys(b, bob)

    async def alice_sees_bob_joined() -> bool:
        members = [
            e["state_key"]
            for e in await a.state(alice, room_id)
            if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
        ]
        return bob.user_id in members

    await eventually(alice_sees_bob_joined, what="bob's join on a")

    # 1. The first query asks b and starts tracking bob; then a answers from its cache.
    body = await query(a, alice, bob.user_id, 10_000)
    assert body["failures"] == {} and set(body["device_keys"][bob.user_id]) == {bob.device_id}
    body = await cached_answer(a, b, alice, bob, "bob's devices cached on a", lambda body: True)
    assert body["device_keys"][bob.user_id][bob.device_id]["keys"] == phone.device_keys()["keys"]

    # 2. A gap: an update whose prev_id a never saw, naming a device b does not have. a
    # resyncs from b, whose list has no such device.
    ghost = Device(bob.user_id, "GHOST", "")
    await send_edu(
        a,
        b,
        {
            "edu_type": "m.device_list_update",
            "content": {
                "user_id": bob.user_id,
                "device_id": "GHOST",
                "stream_id": 10**12,
                "prev_id": [10**12 - 1],
                "deleted": False,
                "keys": ghost.device_keys(),
            },
        },
    )

    # The update marked the list stale before a answered the transaction: an answer
    # from the cache (b cut off) is the resync's.
    body = await cached_answer(
        a, b, alice, bob, "bob's list resynced after the gap", lambda body: True
    )
    assert set(body["device_keys"][bob.user_id]) == {bob.device_id}

    # 3. A new device on b: the update follows on from the resync's stream_id.
    tablet = await login(b, "bob", "TABLET")
    tablet_keys = await upload_keys(b, tablet)
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's new TABLET cached on a",
        lambda body: "TABLET" in body["device_keys"][bob.user_id],
    )
    assert set(body["device_keys"][bob.user_id]) == {bob.device_id, "TABLET"}
    got = body["device_keys"][bob.user_id]["TABLET"]
    assert got["keys"] == tablet_keys.device_keys()["keys"]
    assert got["signatures"] == tablet_keys.device_keys()["signatures"]

    # A renamed device: the new name reaches a too.
    status, resp = await b.client_request(
        "PUT", f"{V3}/devices/TABLET", bob.token, {"display_name": "Bob's tablet"}
    )
    assert status == 200, resp

    def renamed(body: dict[str, Any]) -> bool:
        tablet = body["device_keys"][bob.user_id].get("TABLET", {})
        return bool(tablet.get("unsigned") == {"device_display_name": "Bob's tablet"})

    await cached_answer(a, b, alice, bob, "bob's renamed TABLET on a", renamed)

    # 4. Cross-signing keys, then a reset of them on b.
    first = CrossSigning(bob.user_id)
    status, resp = await with_auth(
        b, "POST", f"{V3}/keys/device_signing/upload", bob, first.upload_body()
    )
    assert status == 200, resp
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's master key cached on a",
        lambda body: body["master_keys"].get(bob.user_id) == first.key_object("master"),
    )
    assert body["self_signing_keys"][bob.user_id] == first.key_object("self_signing")
    assert bob.user_id not in body.get("user_signing_keys", {})
    reset = CrossSigning(bob.user_id)
    status, resp = await with_auth(
        b, "POST", f"{V3}/keys/device_signing/upload", bob, reset.upload_body()
    )
    assert status == 200, resp
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's reset master key cached on a",
        lambda body: body["master_keys"].get(bob.user_id) == reset.key_object("master"),
    )
    assert body["self_signing_keys"][bob.user_id] == reset.key_object("self_signing")

    # alice verifies bob: her user-signing key signs his (remote) master key; a stores the
    # signature and shows it to her alone on his master key.
    alice_keys = CrossSigning(alice.user_id)
    status, resp = await with_auth(
        a, "POST", f"{V3}/keys/device_signing/upload", alice, alice_keys.upload_body()
    )
    assert status == 200, resp
    usk_id = alice_keys.key_id(alice_keys.user_signing)
    signed_bob = sign(reset.key_object("master"), alice.user_id, usk_id, alice_keys.user_signing)
    wrong = sign(first.key_object("master"), alice.user_id, usk_id, alice_keys.user_signing)
    status, resp = await a.client_request(
        "POST",
        f"{V3}/keys/signatures/upload",
        alice.token,
        {
            bob.user_id: {
                reset.master.public_key_base64: signed_bob,
                first.master.public_key_base64: wrong,  # no longer his master key
            }
        },
    )
    assert status == 200, resp
    assert list(resp["failures"].get(bob.user_id, {})) == [first.master.public_key_base64]
    body = await query(a, alice, bob.user_id, 10_000)
    assert body["master_keys"][bob.user_id]["signatures"][alice.user_id] == {
        usk_id: signed_bob["signatures"][alice.user_id][usk_id]
    }

    # 5. A deleted device disappears for a.
    status, resp = await with_auth(b, "DELETE", f"{V3}/devices/TABLET", bob, {})
    assert status == 200, resp
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's deleted TABLET gone on a",
        lambda body: "TABLET" not in body["device_keys"][bob.user_id],
    )
    assert set(body["device_keys"][bob.user_id]) == {bob.device_id}

    # 6. b restarts; the chain goes on from b's stored head, so a keeps following it.
    await b.close()
    await b.restart()
    laptop = await login(b, "bob", "LAPTOP")
    await upload_keys(b, laptop)
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's LAPTOP (after b restarted) cached on a",
        lambda body: "LAPTOP" in body["device_keys"][bob.user_id],
    )
    assert set(body["device_keys"][bob.user_id]) == {bob.device_id, "LAPTOP"}

    # 7. An update made while a is down survives b's restart (b's outbox keeps it until a
    # accepted it): once a is back, a's cache has the new device without another change.
    await a.close()
    await asyncio.to_thread(a.stop)
    desk = await login(b, "bob", "DESK")
    await upload_keys(b, desk)
    await b.close()
    await b.restart()
    await asyncio.to_thread(a.start)
    # Alice speaks, so b hears from a again (which ends b's backoff towards it).
    await a.send_message(alice, room_id, "back")
    body = await cached_answer(
        a,
        b,
        alice,
        bob,
        "bob's DESK (added while a was down) cached on a",
        lambda body: "DESK" in body["device_keys"][bob.user_id],
    )
    assert set(body["device_keys"][bob.user_id]) == {bob.device_id, "LAPTOP", "DESK"}

    # 8. bob leaves the only room he shared with a's users: a forgets his list (asked
    # again, a must go to b, which is cut off: a failure, no stale answer).
    status, resp = await b.client_request("POST", f"{V3}/rooms/{room_id}/leave", bob.token, {})
    assert status == 200, resp

    async def forgotten() -> bool:
        assert b.forwarder is not None
        await b.forwarder.stop()
        try:
            body = await query(a, alice, bob.user_id, 1000)
        finally:
            await b.forwarder.start()
        return b.server_name in body["failures"] and bob.user_id not in body["device_keys"]

    await eventually(forgotten, timeout=60, what="bob's list forgotten on a after he left")
