"""A real application-service framework against Starling: mautrix-python's AppService (the
library mautrix bridges are built on) registered as a bridge would be, on both engines.

It registers its ghost user, joins and talks through masquerading, receives the room's
events in transactions, pings itself through the homeserver, and — stopped while messages
are sent, then started again on the same port — receives every message it missed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mautrix.appservice import AppService
from mautrix.types import Event, EventType, MessageEvent

from starling.storage import Database
from tests.appservice.support import AS_ID, AS_TOKEN, HS_TOKEN, FakeAppService, appservice_harness
from tests.support.harness import SERVER_NAME, Harness

GHOST = f"@bridge_alice:{SERVER_NAME}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Bridge:
    """mautrix's AppService on a fixed loopback port, restartable."""

    def __init__(self, hs_url: str, port: int) -> None:
        self.hs_url = hs_url
        self.port = port
        self.messages: list[str] = []
        self.memberships: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.az: AppService | None = None

    async def start(self) -> AppService:
        az = AppService(
            server=self.hs_url,
            domain=SERVER_NAME,
            as_token=AS_TOKEN,
            hs_token=HS_TOKEN,
            bot_localpart="bridgebot",
            id=AS_ID,
            ephemeral_events=True,
        )

        async def on_event(evt: Event) -> None:
            if isinstance(evt, MessageEvent) and evt.type == EventType.ROOM_MESSAGE:
                self.messages.append(str(evt.content.body))
            elif evt.type == EventType.ROOM_MEMBER:
                self.memberships.append((str(evt.state_key), str(evt.content.membership)))
            self.changed.set()

        az.matrix_event_handler(on_event)
        await az.start(host="127.0.0.1", port=self.port)
        self.az = az
        return az

    async def stop(self) -> None:
        if self.az is not None:
            await self.az.stop()
            self.az = None

    async def wait_for(self, check: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                except TimeoutError:
                    continue


@pytest.fixture
async def setup(database: Database, tmp_path: Path) -> AsyncIterator[tuple[Harness, Bridge]]:
    port = _free_port()
    registration = FakeAppService()  # only for its registration file
    registration.url = f"http://127.0.0.1:{port}"
    async with appservice_harness(database, tmp_path, registration) as hs:
        bridge = Bridge(str(hs.client.make_url("")).rstrip("/"), port)
        await bridge.start()
        try:
            yield hs, bridge
        finally:
            await bridge.stop()


async def _owner_room(hs: Harness) -> tuple[str, str]:
    _, token = await hs.register("owner")
    room_id = await hs.create_room(token, preset="public_chat")
    return token, room_id


async def test_mautrix_bridge_registers_talks_and_receives(
    setup: tuple[Harness, Bridge],
) -> None:
    hs, bridge = setup
    assert bridge.az is not None
    token, room_id = await _owner_room(hs)
    ghost = bridge.az.intent.user(GHOST)
    await ghost.ensure_registered()
    await ghost.join_room(room_id)
    await ghost.send_text(room_id, "hello from the bridge")
    await hs.send_message(token, room_id, "hello, ghost")
    await bridge.wait_for(lambda: "hello, ghost" in bridge.messages)
    assert bridge.messages == ["hello from the bridge", "hello, ghost"]
    assert (GHOST, "join") in bridge.memberships
    # The homeserver sees the ghost's message as the ghost's.
    status, body = await hs.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5", token
    )
    senders = {e["sender"] for e in body["chunk"] if e["type"] == "m.room.message"}
    assert status == 200 and GHOST in senders
    # Ping: the homeserver calls the bridge back with its hs_token, mautrix checks it.
    assert await bridge.az.ping_self() >= 0


async def test_mautrix_bridge_down_then_up_misses_nothing(setup: tuple[Harness, Bridge]) -> None:
    hs, bridge = setup
    assert bridge.az is not None
    token, room_id = await _owner_room(hs)
    ghost = bridge.az.intent.user(GHOST)
    await ghost.ensure_registered()
    await ghost.join_room(room_id)
    await bridge.wait_for(lambda: (GHOST, "join") in bridge.memberships)
    await bridge.stop()
    sent = [f"while the bridge is down {i}" for i in range(3)]
    for text in sent:
        await hs.send_message(token, room_id, text)
    await asyncio.sleep(0.5)  # let the sender fail at least once
    await bridge.start()
    await bridge.wait_for(lambda: all(t in bridge.messages for t in sent), timeout=30)
    assert bridge.messages == sent
