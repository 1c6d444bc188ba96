"""Two real `starling serve` processes over TLS (both engines): a new device on b is seen
by a's user through /keys/changes, the sync `device_lists` section and /keys/query (over
federation), its one-time key is claimed through a, and a server that cannot be reached
lands in `failures` (except for the users a has cached)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.e2ee.support import Device
from tests.federation.harness import (
    FederatedServer,
    User,
    eventually,
    federation_servers,
    signed_request,
)

V3 = "/_matrix/client/v3"
PASSWORD = "pw-" + "x" * 8


async def login(server: FederatedServer, localpart: str, device_id: str) -> User:
    status, body = await server.client_request(
        "POST",
        f"{V3}/login",
        None,
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": PASSWORD,
            "device_id": device_id,
        },
    )
    assert status == 200, body
    return User(body["user_id"], body["access_token"], body["device_id"])


async def upload_keys(server: FederatedServer, user: User) -> Device:
    device = Device(user.user_id, user.device_id, user.token)
    status, body = await server.client_request(
        "POST",
        f"{V3}/keys/upload",
        user.token,
        {"device_keys": device.device_keys(), "one_time_keys": device.one_time_keys(2)},
    )
    assert status == 200, body
    return device


async def sync(server: FederatedServer, user: User, since: str | None) -> dict[str, Any]:
    params = {"timeout": "0"}
    if since is not None:
        params["since"] = since
    status, body = await server.client_request("GET", f"{V3}/sync", user.token, params=params)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def test_a_new_remote_device_is_seen_and_its_keys_claimed(
    engine: str, tmp_path: Path
) -> None:
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        alice = await a.register("alice")
        bob = await b.register("bob")
        room_id = await a.create_room(alice, preset="public_chat")
        assert await b.join(bob, room_id, via=[a.server_name]) == room_id
        await upload_keys(b, bob)

        async def alice_sees_bob_joined() -> bool:
            members = [
                e["state_key"]
                for e in await a.state(alice, room_id)
                if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
            ]
            return bob.user_id in members

        await eventually(alice_sees_bob_joined, what="bob's join on a")
        since = (await sync(a, alice, None))["next_batch"]

        # bob logs in on a new device and uploads its keys.
        tablet = await login(b, "bob", "TABLET")
        tablet_keys = await upload_keys(b, tablet)

        async def changes_name_bob() -> bool:
            upto = (await sync(a, alice, since))["next_batch"]
            status, body = await a.client_request(
                "GET", f"{V3}/keys/changes", alice.token, params={"from": since, "to": upto}
            )
            assert status == 200, body
            return bob.user_id in body["changed"]

        async def sync_names_bob() -> bool:
            body = await sync(a, alice, since)
            return bob.user_id in body.get("device_lists", {}).get("changed", [])

        await eventually(sync_names_bob, what="bob in alice's sync device_lists.changed")
        assert await changes_name_bob()

        # "changed" may name bob for his first device's update already; a answers from
        # its cache, which has TABLET once that update arrived too.
        body = {}

        async def query_has_tablet() -> bool:
            nonlocal body
            status, body = await a.client_request(
                "POST", f"{V3}/keys/query", alice.token, {"device_keys": {bob.user_id: []}}
            )
            assert status == 200, body
            assert body["failures"] == {}
            return "TABLET" in body["device_keys"][bob.user_id]

        await eventually(query_has_tablet, what="bob's TABLET in a's /keys/query")
        devices = body["device_keys"][bob.user_id]
        assert set(devices) == {bob.device_id, "TABLET"}
        assert devices["TABLET"]["keys"] == tablet_keys.device_keys()["keys"]

        status, body = await a.client_request(
            "POST",
            f"{V3}/keys/claim",
            alice.token,
            {"one_time_keys": {bob.user_id: {"TABLET": "signed_curve25519"}}},
        )
        assert status == 200, body
        claimed = body["one_time_keys"][bob.user_id]["TABLET"]
        assert len(claimed) == 1 and next(iter(claimed)).startswith("signed_curve25519:")

        # b's /user/devices, asked by a (signed as a): every device, with its keys.
        status, body = await signed_request(
            b,
            "GET",
            f"/_matrix/federation/v1/user/devices/{bob.user_id}",
            origin=a.server_name,
            key=a.signing_key(),
        )
        assert status == 200, body
        assert body["user_id"] == bob.user_id and isinstance(body["stream_id"], int)
        by_id = {d["device_id"]: d for d in body["devices"]}
        assert set(by_id) == {bob.device_id, "TABLET"}
        assert by_id["TABLET"]["keys"]["keys"] == tablet_keys.device_keys()["keys"]
        # Another server's user, and garbage: Matrix errors.
        status, body = await signed_request(
            b,
            "GET",
            f"/_matrix/federation/v1/user/devices/{alice.user_id}",
            origin=a.server_name,
            key=a.signing_key(),
        )
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        for path, sent in [
            ("/_matrix/federation/v1/user/keys/query", {"device_keys": [1]}),
            ("/_matrix/federation/v1/user/keys/claim", {"one_time_keys": "x"}),
            ("/_matrix/federation/v1/user/keys/query", {"device_keys": {bob.user_id: "x"}}),
        ]:
            status, body = await signed_request(
                b, "POST", path, origin=a.server_name, key=a.signing_key(), body=sent
            )
            assert status == 400 and body["errcode"] == "M_BAD_JSON", (path, body)

        # A server that is down is a failure, not an error, for a user a has not cached
        # (sharing no room with a's users); bob's devices a answers from its cache.
        await b.close()
        await asyncio.to_thread(b.stop)
        stranger = f"@stranger:{b.server_name}"
        status, body = await a.client_request(
            "POST",
            f"{V3}/keys/query",
            alice.token,
            {"device_keys": {bob.user_id: [], stranger: []}, "timeout": 2000},
        )
        assert status == 200, body
        assert b.server_name in body["failures"]
        assert stranger not in body["device_keys"]
        assert set(body["device_keys"][bob.user_id]) == {bob.device_id, "TABLET"}
