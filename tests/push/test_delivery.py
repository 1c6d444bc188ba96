"""Push delivery to a real HTTP push gateway (an aiohttp server playing Sygnal), on both
engines: the notification's fields and counts, event_id_only, retries, rejected pushkeys,
and the events that must not be pushed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from starling.protocol.event import Event
from starling.protocol.room_versions import get_room_version
from starling.protocol.signing import SigningKey
from starling.rooms.builder import EventBuilder
from starling.storage.database import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
NOTIFY = "/_matrix/push/v1/notify"
WAIT = 30.0  # only to detect a hang


class Gateway:
    """Records every notify request; fails the first `fail` of them with 500 and lists
    the pushkeys in `reject` as rejected."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.attempts = 0
        self.fail = 0
        self.reject: set[str] = set()
        self.url = ""

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.attempts += 1
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": "down"}, status=500)
        await self.received.put(body)
        keys = [d["pushkey"] for d in body["notification"]["devices"]]
        return web.json_response({"rejected": [k for k in keys if k in self.reject]})

    async def next(self) -> dict[str, Any]:
        body: dict[str, Any] = (await asyncio.wait_for(self.received.get(), WAIT))["notification"]
        return body


@pytest.fixture
def hs_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    # The gateway listens on loopback, which the default ip_range_blacklist refuses.
    overrides: dict[str, Any] = getattr(request, "param", {"ip_range_blacklist": []})
    return overrides


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post(NOTIFY, gw.notify)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gw.url = f"http://127.0.0.1:{port}{NOTIFY}"
    try:
        yield gw
    finally:
        await runner.cleanup()


@pytest.fixture
async def pushing(hs: Harness) -> AsyncIterator[Harness]:
    sender = hs.services.push_sender
    sender.first_backoff = 0.01
    await hs.services.push_evaluator.start()
    await sender.start()
    try:
        yield hs
    finally:
        await sender.stop()
        await hs.services.push_evaluator.stop()


async def ok(hs: Harness, method: str, path: str, token: str, body: Any = None) -> Any:
    status, resp = await hs.request(method, path, token, body)
    assert status == 200, resp
    return resp


async def set_pusher(
    hs: Harness, token: str, gw: Gateway, pushkey: str = "key1", **data: Any
) -> None:
    body = {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": gw.url, **data},
    }
    await ok(hs, "POST", f"{V3}/pushers/set", token, body)


async def dm_room(hs: Harness) -> tuple[str, str, str, str, str]:
    """alice and bob in a two-member room: (alice, alice token, bob, bob token, room)."""
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    room = await hs.create_room(atok, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{quote(room)}", btok, {})
    return alice, atok, bob, btok, room


async def test_notification_fields_and_counts(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway, custom={"a": 1})
    first = await hs.send_message(atok, room, "hello")
    second = await hs.send_message(atok, room, "again")
    n = await gateway.next()
    assert n["event_id"] == first
    assert n["room_id"] == room
    assert n["type"] == "m.room.message"
    assert n["sender"] == alice
    assert n["content"] == {"msgtype": "m.text", "body": "hello"}
    assert n["counts"]["unread"] >= 1
    assert n["prio"] == "high"  # a one-to-one room: the default rule plays a sound
    [device] = n["devices"]
    assert device["app_id"] == "org.example.app"
    assert device["pushkey"] == "key1"
    assert isinstance(device["pushkey_ts"], int) and device["pushkey_ts"] > 0
    assert device["data"] == {"custom": {"a": 1}}  # no url, no format
    assert device["tweaks"] == {"sound": "default"}
    n2 = await gateway.next()
    assert n2["event_id"] == second  # in order
    assert n2["counts"]["unread"] == 2


async def test_event_id_only(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway, format="event_id_only")
    event_id = await hs.send_message(atok, room, "secret")
    n = await gateway.next()
    assert n["event_id"] == event_id and n["room_id"] == room
    assert "content" not in n and "sender" not in n and "type" not in n
    assert n["counts"] == {"unread": 1}
    assert n["devices"][0]["data"] == {}


async def test_failing_gateway_gets_it_once(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway)
    gateway.fail = 2
    first = await hs.send_message(atok, room, "one")
    second = await hs.send_message(atok, room, "two")
    assert (await gateway.next())["event_id"] == first
    assert (await gateway.next())["event_id"] == second
    assert gateway.attempts == 4  # two failures, then each notification once
    assert gateway.received.empty()


async def test_rejected_pushkey_removes_pusher(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway, pushkey="gone")
    await set_pusher(hs, btok, gateway, pushkey="kept")
    assert len((await ok(hs, "GET", f"{V3}/pushers", btok))["pushers"]) == 2
    gateway.reject = {"gone"}
    await hs.send_message(atok, room, "hi")
    await gateway.next()
    await gateway.next()

    async def only_kept() -> None:
        while True:
            pushers = (await ok(hs, "GET", f"{V3}/pushers", btok))["pushers"]
            if [p["pushkey"] for p in pushers] == ["kept"]:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(only_kept(), WAIT)
    # The next message reaches the pusher that is left, and only that one.
    event_id = await hs.send_message(atok, room, "still there?")
    n = await gateway.next()
    assert n["event_id"] == event_id
    assert [d["pushkey"] for d in n["devices"]] == ["kept"]
    assert gateway.received.empty()


async def test_no_push_for_own_messages_or_muted_rooms(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    other = await hs.create_room(atok, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{quote(other)}", btok, {})
    await set_pusher(hs, btok, gateway)
    # bob mutes `room` with a room rule that does not notify.
    await ok(hs, "PUT", f"{V3}/pushrules/global/room/{quote(room)}", btok, {"actions": []})
    await hs.send_message(btok, room, "my own words")
    await hs.send_message(btok, other, "my own words too")
    await hs.send_message(atok, room, "muted")
    # Events are evaluated in order: the first push bob gets is for the marker.
    marker = await hs.send_message(atok, other, "marker")
    n = await gateway.next()
    assert n["event_id"] == marker
    assert gateway.received.empty()


async def test_invite_is_pushed_to_the_invitee(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    await set_pusher(hs, btok, gateway)
    room = await hs.create_room(atok)
    await ok(hs, "POST", f"{V3}/rooms/{quote(room)}/invite", atok, {"user_id": bob})
    n = await gateway.next()
    assert n["type"] == "m.room.member" and n["sender"] == alice
    assert n["content"]["membership"] == "invite"
    assert gateway.received.empty()


@pytest.mark.parametrize("hs_config", [{}], indirect=True)
async def test_gateway_in_a_blacklisted_range_is_never_contacted(
    pushing: Harness, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A pusher URL is the user's to choose: with the default ip_range_blacklist the server
    never connects to loopback (or any private range) to deliver it."""
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway)
    await hs.send_message(atok, room, "hello")
    sender = hs.services.push_sender
    # The refusal is final (no retries): the delivery task ends without a request.
    with caplog.at_level(logging.WARNING, logger="starling.push.delivery"):
        for _ in range(100):  # a hang guard of 5 s
            await asyncio.sleep(0.05)
            if "refused" in caplog.text and not sender._tasks:
                break
    assert "refused by ip_range_blacklist" in caplog.text
    assert not sender._tasks, "delivery still retrying a refused address"
    assert gateway.received.empty()


async def test_room_and_sender_names_and_invite_fields(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway)
    await ok(hs, "PUT", f"{V3}/profile/{quote(alice)}/displayname", atok, {"displayname": "Al"})
    await ok(hs, "PUT", f"{V3}/rooms/{quote(room)}/state/m.room.name", atok, {"name": "Hall"})
    event_id = await hs.send_message(atok, room, "named")
    for _ in range(5):
        n = await gateway.next()
        if n.get("event_id") == event_id:
            break
    assert n["id"] == event_id  # Synapse's name for it, which gateways read
    assert n["room_name"] == "Hall" and n["sender_display_name"] == "Al"
    carol, ctok = await hs.register()
    await set_pusher(hs, ctok, gateway, pushkey="key2")
    await ok(hs, "POST", f"{V3}/rooms/{quote(room)}/invite", atok, {"user_id": carol})
    for _ in range(5):
        n = await gateway.next()
        if n.get("type") == "m.room.member":
            break
    assert n["membership"] == "invite" and n["user_is_target"] is True


async def test_read_receipt_pushes_the_new_badge(pushing: Harness, gateway: Gateway) -> None:
    hs = pushing
    _alice, atok, _bob, btok, room = await dm_room(hs)
    await set_pusher(hs, btok, gateway)
    event_id = await hs.send_message(atok, room, "unread")
    n = await gateway.next()
    assert n["event_id"] == event_id and n["counts"]["unread"] == 1
    await ok(hs, "POST", f"{V3}/rooms/{quote(room)}/receipt/m.read/{quote(event_id)}", btok, {})
    badge = await gateway.next()
    assert badge["counts"] == {"unread": 0}
    assert "event_id" not in badge and "type" not in badge
    assert badge["devices"][0]["pushkey"] == "key1"


async def test_restart_pushes_what_was_queued_or_persisted_while_down(
    database: Database, tmp_path: Path, gateway: Gateway
) -> None:
    """Per-pusher positions are stored: a notification still being retried when the server
    stops, and an event persisted while pushing was down, both reach the gateway after a
    restart (a new service graph on the same database), in order, once each."""
    async with make_harness(database, tmp_path, ip_range_blacklist=[]) as hs:
        hs.services.push_sender.first_backoff = 30.0  # still waiting to retry at stop
        await hs.services.push_evaluator.start()
        await hs.services.push_sender.start()
        _alice, atok, _bob, btok, room = await dm_room(hs)
        await set_pusher(hs, btok, gateway)
        gateway.fail = 1_000  # the gateway is down
        queued = await hs.send_message(atok, room, "queued at stop")
        for _ in range(500):  # a hang guard of 5 s
            if gateway.attempts:
                break
            await asyncio.sleep(0.01)
        assert gateway.attempts == 1
        await hs.services.push_sender.stop()
        await hs.services.push_evaluator.stop()
        # Persisted while nothing evaluated or pushed (as while the server is down).
        missed = await hs.send_message(atok, room, "sent while down")
    gateway.fail = 0
    async with make_harness(database, tmp_path, ip_range_blacklist=[]) as hs:
        await hs.services.push_evaluator.start()
        await hs.services.push_sender.start()
        try:
            first, second = await gateway.next(), await gateway.next()
            assert [first["event_id"], second["event_id"]] == [queued, missed]
            assert second["counts"]["unread"] == 2
            after = await hs.send_message(atok, room, "after restart")
            assert (await gateway.next())["event_id"] == after
            assert gateway.received.empty()
        finally:
            await hs.services.push_sender.stop()
            await hs.services.push_evaluator.stop()


async def test_invite_from_another_server_is_pushed(pushing: Harness, gateway: Gateway) -> None:
    """An invite to a room this server is not in arrives as an out-of-band member event
    (an outlier with a stream position): it is evaluated and pushed all the same, named
    from the stripped state the inviting server sent."""
    hs = pushing
    bob, btok = await hs.register()
    await set_pusher(hs, btok, gateway)
    rv = get_room_version("10")
    built = EventBuilder("other.example", SigningKey.generate("k1")).build(
        room_version=rv,
        room_id="!remote:other.example",
        event_type="m.room.member",
        sender="@carol:other.example",
        content={"membership": "invite"},
        state_key=bob,
        prev_events=[],
        auth_events=[],
    )
    stripped = [
        {
            "type": "m.room.name",
            "state_key": "",
            "sender": "@carol:other.example",
            "content": {"name": "Over There"},
        },
        {
            "type": "m.room.member",
            "state_key": "@carol:other.example",
            "sender": "@carol:other.example",
            "content": {"membership": "join", "displayname": "Carol"},
        },
    ]
    invite = Event({**built.pdu, "unsigned": {"invite_room_state": stripped}}, built.event_id, rv)
    async with hs.services.room_locks.lock(invite.room_id):
        await hs.services.persister.persist_out_of_band_membership(invite)
    n = await gateway.next()
    assert n["event_id"] == invite.event_id
    assert n["type"] == "m.room.member" and n["membership"] == "invite"
    assert n["user_is_target"] is True
    assert n["sender"] == "@carol:other.example"
    assert n["room_name"] == "Over There"
    assert n["sender_display_name"] == "Carol"
