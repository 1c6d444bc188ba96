"""Application services against a whole homeserver (both engines) and a real HTTP service:
the as_token, masquerading, namespace registration and exclusivity, queries, ping, and
the transactions the service is pushed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from starling.storage import Database
from tests.appservice.support import AS_ID, AS_TOKEN, HS_TOKEN, FakeAppService, appservice_harness
from tests.support.harness import SERVER_NAME, Harness

V3 = "/_matrix/client/v3"
GHOST = f"@bridge_alice:{SERVER_NAME}"
BOT = f"@bridgebot:{SERVER_NAME}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAppService]:
    service = FakeAppService()
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def hs(database: Database, tmp_path: Path, fake: FakeAppService) -> AsyncIterator[Harness]:
    async with appservice_harness(database, tmp_path, fake) as harness:
        yield harness


async def _register_ghost(hs: Harness, localpart: str = "bridge_alice") -> dict[str, object]:
    status, body = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"type": "m.login.application_service", "username": localpart},
    )
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_as_token_acts_as_the_sender_or_a_registered_namespace_user(hs: Harness) -> None:
    assert await hs.request("GET", f"{V3}/account/whoami", AS_TOKEN) == (
        200,
        {"user_id": BOT, "is_guest": False},
    )
    # Not registered yet: refused, as Synapse does.
    status, body = await hs.request(
        "GET", f"{V3}/account/whoami", AS_TOKEN, params={"user_id": GHOST}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    await _register_ghost(hs)
    status, body = await hs.request(
        "GET", f"{V3}/account/whoami", AS_TOKEN, params={"user_id": GHOST}
    )
    assert (status, body["user_id"]) == (200, GHOST)
    # Outside the namespace, even an existing user.
    user, _ = await hs.register("carol")
    status, body = await hs.request(
        "GET", f"{V3}/account/whoami", AS_TOKEN, params={"user_id": user}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    # user_id means nothing with an ordinary token.
    _, token = await hs.register("dave")
    status, body = await hs.request("GET", f"{V3}/account/whoami", token, params={"user_id": GHOST})
    assert body["user_id"] == f"@dave:{SERVER_NAME}"
    # The hs_token is ours; it never authenticates anything here.
    status, body = await hs.request("GET", f"{V3}/account/whoami", HS_TOKEN)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_a_service_deactivates_its_users_without_interactive_auth(hs: Harness) -> None:
    await _register_ghost(hs)
    status, body = await hs.request(
        "POST", f"{V3}/account/deactivate", AS_TOKEN, {}, params={"user_id": GHOST}
    )
    assert (status, body) == (200, {"id_server_unbind_result": "success"})
    user = await hs.services.account_store.get_user(GHOST)
    assert user is not None and user.deactivated
    # An ordinary user's token still needs it.
    _, token = await hs.register("carol")
    status, body = await hs.request("POST", f"{V3}/account/deactivate", token, {})
    assert status == 401 and "flows" in body


async def test_registration_in_and_out_of_the_namespace(hs: Harness) -> None:
    body = await _register_ghost(hs)
    assert body["user_id"] == GHOST and "access_token" in body and "device_id" in body
    status, again = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"type": "m.login.application_service", "username": "bridge_alice"},
    )
    assert (status, again["errcode"]) == (400, "M_USER_IN_USE")
    status, body = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"type": "m.login.application_service", "username": "bridge_bob", "inhibit_login": True},
    )
    assert status == 200 and set(body) == {"user_id", "home_server"}
    status, body = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"type": "m.login.application_service", "username": "someone"},
    )
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    # The type may be given as the auth's instead (Synapse accepts both forms).
    status, body = await hs.request(
        "POST",
        f"{V3}/register",
        AS_TOKEN,
        {"auth": {"type": "m.login.application_service"}, "username": "bridge_dave"},
    )
    assert status == 200 and body["user_id"].startswith("@bridge_dave:"), body
    # Without the service's token the login type is refused.
    _, token = await hs.register("eve")
    for bearer in (None, token):
        status, body = await hs.request(
            "POST",
            f"{V3}/register",
            bearer,
            {"type": "m.login.application_service", "username": "bridge_x"},
        )
        assert status == 401, body
    # Ordinary registration may not take a reserved ID (nor the service's own user).
    for name in ("bridge_carol", "bridgebot"):
        status, body = await hs.request("GET", f"{V3}/register/available?username={name}")
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
        status, body = await hs.request(
            "POST",
            f"{V3}/register",
            None,
            {"username": name, "password": "pw-123456", "auth": {"type": "m.login.dummy"}},
        )
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE"), body


async def test_login_as_a_namespace_user(hs: Harness) -> None:
    await _register_ghost(hs)
    login = {
        "type": "m.login.application_service",
        "identifier": {"type": "m.id.user", "user": "bridge_alice"},
    }
    status, body = await hs.request("POST", f"{V3}/login", AS_TOKEN, login)
    assert (status, body["user_id"]) == (200, GHOST)
    status, _ = await hs.request("POST", f"{V3}/login", None, login)
    assert status == 401
    outside = {**login, "identifier": {"type": "m.id.user", "user": "carol"}}
    status, body = await hs.request("POST", f"{V3}/login", AS_TOKEN, outside)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, flows = await hs.request("GET", f"{V3}/login")
    assert {"type": "m.login.application_service"} in flows["flows"]


async def test_aliases_in_the_namespace_are_the_services(hs: Harness) -> None:
    _user, token = await hs.register("owner")
    room_id = await hs.create_room(token)
    alias = f"%23bridge_room:{SERVER_NAME}"
    status, body = await hs.request(
        "PUT", f"{V3}/directory/room/{alias}", token, {"room_id": room_id}
    )
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    # The service need not be in the room.
    status, body = await hs.request(
        "PUT", f"{V3}/directory/room/{alias}", AS_TOKEN, {"room_id": room_id}
    )
    assert status == 200, body
    status, body = await hs.request(
        "PUT", f"{V3}/directory/room/%23other:{SERVER_NAME}", AS_TOKEN, {"room_id": room_id}
    )
    assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
    status, body = await hs.request("DELETE", f"{V3}/directory/room/{alias}", AS_TOKEN)
    assert status == 200, body


async def test_masquerading_ghost_sends_and_the_service_is_pushed_it(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST}
    )
    assert status == 200, body
    status, body = await hs.request(
        "PUT",
        f"{V3}/rooms/{room_id}/send/m.room.message/t1",
        AS_TOKEN,
        {"msgtype": "m.text", "body": "from the bridge"},
        params={"user_id": GHOST},
    )
    assert status == 200, body
    # The owner's message is sent too: a namespace user is in the room.
    await hs.send_message(token, room_id, "hello ghost")

    def bodies() -> list[str]:
        return [e["content"].get("body") for e in fake.events() if e["type"] == "m.room.message"]

    await fake.wait_for(lambda: "hello ghost" in bodies())
    assert bodies() == ["from the bridge", "hello ghost"]
    join = [e for e in fake.events() if e["type"] == "m.room.member"]
    assert join[0]["state_key"] == GHOST and join[0]["room_id"] == room_id
    assert set(fake.auth_headers) == {f"Bearer {HS_TOKEN}"}
    ids = [int(t) for t, _ in fake.transactions]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_uninteresting_events_are_not_pushed(hs: Harness, fake: FakeAppService) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token)
    await hs.send_message(token, room_id, "private")
    # Then something the service does care about, so we know the sender got past it.
    await _register_ghost(hs)
    other = await hs.create_room(token, preset="public_chat")
    await hs.request("POST", f"{V3}/rooms/{other}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    await fake.wait_for(lambda: any(e["room_id"] == other for e in fake.events()))
    assert all(e["room_id"] != room_id for e in fake.events())


async def test_a_service_that_is_down_gets_every_transaction_once_in_order(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    await fake.wait_for(lambda: len(fake.events()) >= 1)
    fake.fail_transactions = True
    failures_before = len(fake.auth_headers)
    for i in range(5):
        await hs.send_message(token, room_id, f"m{i}")
    await fake.wait_for(lambda: len(fake.auth_headers) >= failures_before + 2)
    fake.fail_transactions = False
    await fake.wait_for(
        lambda: [e["content"].get("body") for e in fake.events()][-1:] == ["m4"], timeout=20
    )
    bodies = [e["content"].get("body") for e in fake.events() if e["type"] == "m.room.message"]
    assert bodies == [f"m{i}" for i in range(5)]
    ids = [int(t) for t, _ in fake.transactions]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_transactions_survive_a_restart_of_the_sender(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    await fake.wait_for(lambda: len(fake.events()) >= 1)
    sender = hs.services.app_service_sender
    await sender.stop()
    fake.fail_transactions = True  # down while we are down too
    for i in range(3):
        await hs.send_message(token, room_id, f"while stopped {i}")
    fake.fail_transactions = False
    await sender.start()  # as a new process would: from the stored position and queue
    await fake.wait_for(
        lambda: sum(e["type"] == "m.room.message" for e in fake.events()) >= 3, timeout=20
    )
    bodies = [e["content"]["body"] for e in fake.events() if e["type"] == "m.room.message"]
    assert bodies == [f"while stopped {i}" for i in range(3)]
    ids = [int(t) for t, _ in fake.transactions]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_inviting_an_unknown_namespace_user_asks_the_service(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token)

    async def create(user_id: str) -> bool:
        await _register_ghost(hs, user_id[1:].split(":")[0])
        return True

    fake.on_user_query = create
    target = f"@bridge_newcomer:{SERVER_NAME}"
    status, body = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/invite", token, {"user_id": target}
    )
    assert status == 200, body
    assert fake.queries == [target]
    await fake.wait_for(lambda: any(e.get("state_key") == target for e in fake.events()))


async def test_joining_an_unknown_namespace_alias_asks_the_service(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    alias = f"#bridge_portal:{SERVER_NAME}"

    async def create(requested: str) -> bool:
        status, _ = await hs.request(
            "PUT", f"{V3}/directory/room/%23{requested[1:]}", AS_TOKEN, {"room_id": room_id}
        )
        return status == 200

    fake.on_alias_query = create
    _, joiner = await hs.register("joiner")
    status, body = await hs.request("POST", f"{V3}/join/%23{alias[1:]}", joiner, {})
    assert (status, body.get("room_id")) == (200, room_id), (body, fake.queries)
    assert fake.queries == [alias]
    # Unknown and outside every namespace: 404, nobody asked.
    status, body = await hs.request("GET", f"{V3}/directory/room/%23nothing:{SERVER_NAME}")
    assert status == 404 and fake.queries == [alias]


async def test_thirdparty_protocols_come_from_the_service(
    hs: Harness, fake: FakeAppService
) -> None:
    _, token = await hs.register("user")
    fake.protocol_answer = {
        "user_fields": ["name"],
        "location_fields": [],
        "icon": "mxc://example.org/icon",
        "field_types": {},
        "instances": [{"desc": "Fake", "network_id": "net1", "fields": {}}],
    }
    status, body = await hs.request("GET", f"{V3}/thirdparty/protocols", token)
    assert status == 200
    assert body["fakenet"]["instances"][0]["instance_id"] == f"{AS_ID}|net1"
    status, body = await hs.request("GET", f"{V3}/thirdparty/protocol/unknown", token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_ping(hs: Harness, fake: FakeAppService) -> None:
    path = f"/_matrix/client/v1/appservice/{AS_ID}/ping"
    status, body = await hs.request("POST", path, AS_TOKEN, {"transaction_id": "p1"})
    assert status == 200 and isinstance(body["duration_ms"], int)
    assert fake.queries == ["ping:p1"]
    status, body = await hs.request(
        "POST", "/_matrix/client/v1/appservice/other/ping", AS_TOKEN, {}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    _, token = await hs.register("user")
    status, body = await hs.request("POST", path, token, {})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_typing_and_receipts_reach_a_service_that_asked_for_them(
    hs: Harness, fake: FakeAppService
) -> None:
    user, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    event_id = await hs.send_message(token, room_id, "read me")
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/typing/{user}", token, {"typing": True, "timeout": 30000}
    )
    assert status == 200
    status, _ = await hs.request(
        "POST", f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}", token, {}
    )
    assert status == 200

    def ephemeral() -> list[dict[str, Any]]:
        return [e for _, body in fake.transactions for e in body.get("ephemeral", [])]

    await fake.wait_for(lambda: {e["type"] for e in ephemeral()} >= {"m.typing", "m.receipt"})
    typing = next(e for e in ephemeral() if e["type"] == "m.typing")
    assert typing["room_id"] == room_id and typing["content"]["user_ids"] == [user]
    receipt = next(e for e in ephemeral() if e["type"] == "m.receipt")
    assert user in receipt["content"][event_id]["m.read"]
    # A room without any of the service's users: nothing.
    other = await hs.create_room(token)
    await hs.request(
        "PUT", f"{V3}/rooms/{other}/typing/{user}", token, {"typing": True, "timeout": 30000}
    )
    await hs.send_message(token, room_id, "flush")
    await fake.wait_for(lambda: "flush" in [e["content"].get("body") for e in fake.events()])
    assert all(e.get("room_id") != other for e in ephemeral())


async def test_a_service_publishes_rooms_in_its_networks_list(hs: Harness) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat", name="Bridged")
    path = f"{V3}/directory/list/appservice/net1/{room_id}"
    status, body = await hs.request("PUT", path, token, {"visibility": "public"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")  # only a service may
    status, _ = await hs.request("PUT", path, AS_TOKEN, {"visibility": "public"})
    assert status == 200

    async def listed(body: dict[str, Any]) -> bool:
        status, found = await hs.request("POST", f"{V3}/publicRooms", token, body)
        assert status == 200, found
        return room_id in [e["room_id"] for e in found["chunk"]]

    assert not await listed({})
    assert await listed({"third_party_instance_id": f"{AS_ID}|net1"})
    assert not await listed({"third_party_instance_id": f"{AS_ID}|net2"})
    assert await listed({"include_all_networks": True})
    status, _ = await hs.request(
        "PUT", f"{V3}/directory/list/room/{room_id}", token, {"visibility": "public"}
    )
    assert status == 200
    status, _ = await hs.request("DELETE", path, AS_TOKEN)
    assert status == 200
    assert not await listed({"third_party_instance_id": f"{AS_ID}|net1"})
    assert await listed({})
    status, body = await hs.request("POST", f"{V3}/publicRooms", token, {"include_all_networks": 1})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_transaction_ids_make_a_services_sends_idempotent(hs: Harness) -> None:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    path = f"{V3}/rooms/{room_id}/send/m.room.message/retry-1"
    message = {"msgtype": "m.text", "body": "once"}
    first = await hs.request("PUT", path, AS_TOKEN, message, params={"user_id": GHOST})
    again = await hs.request("PUT", path, AS_TOKEN, message, params={"user_id": GHOST})
    assert first[0] == 200 and first == again
    # Another user of the service with the same transaction ID is another message.
    await _register_ghost(hs, "bridge_bob")
    bob = {"user_id": f"@bridge_bob:{SERVER_NAME}"}
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params=bob)
    other = await hs.request("PUT", path, AS_TOKEN, message, params=bob)
    assert other[0] == 200 and other[1]["event_id"] != first[1]["event_id"]


async def test_presence_of_users_sharing_a_room_reaches_the_service(
    hs: Harness, fake: FakeAppService
) -> None:
    user, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    await _register_ghost(hs)
    await hs.request("POST", f"{V3}/rooms/{room_id}/join", AS_TOKEN, {}, params={"user_id": GHOST})
    status, _ = await hs.request(
        "PUT", f"{V3}/presence/{user}/status", token, {"presence": "online", "status_msg": "hi"}
    )
    assert status == 200

    def presence() -> list[dict[str, Any]]:
        return [
            e
            for _, body in fake.transactions
            for e in body.get("ephemeral", [])
            if e["type"] == "m.presence" and e["sender"] == user
        ]

    await fake.wait_for(lambda: bool(presence()))
    assert presence()[-1]["content"]["status_msg"] == "hi"
    # Someone sharing no room with the service's users: not sent.
    loner, loner_token = await hs.register("loner")
    await hs.request("PUT", f"{V3}/presence/{loner}/status", loner_token, {"presence": "online"})
    await hs.send_message(token, room_id, "flush")
    await fake.wait_for(lambda: "flush" in [e["content"].get("body") for e in fake.events()])
    senders = {e.get("sender") for _, b in fake.transactions for e in b.get("ephemeral", [])}
    assert loner not in senders


async def test_device_masquerading(hs: Harness) -> None:
    body = await _register_ghost(hs)
    device = body["device_id"]
    params = {"user_id": GHOST, "device_id": str(device)}
    status, whoami = await hs.request("GET", f"{V3}/account/whoami", AS_TOKEN, params=params)
    assert (status, whoami) == (200, {"user_id": GHOST, "is_guest": False, "device_id": device})
    params["device_id"] = "NOSUCHDEVICE"
    status, error = await hs.request("GET", f"{V3}/account/whoami", AS_TOKEN, params=params)
    assert (status, error["errcode"]) == (400, "M_UNKNOWN_DEVICE")
    # The sender's own user has no such device either.
    status, error = await hs.request(
        "GET", f"{V3}/account/whoami", AS_TOKEN, params={"device_id": str(device)}
    )
    assert (status, error["errcode"]) == (400, "M_UNKNOWN_DEVICE")
    # Meaningless with an ordinary token.
    _, token = await hs.register("dave", device_id="DAVEDEV")
    status, whoami = await hs.request(
        "GET", f"{V3}/account/whoami", token, params={"device_id": "OTHER"}
    )
    assert (status, whoami["device_id"]) == (200, "DAVEDEV")
