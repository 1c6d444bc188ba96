"""matrix-nio against a real `starling serve` (both engines): registration, login, a room
with an invite and a join seen through /sync, 100 messages both ways received in order by
incremental sync and again by paging back through /messages, display names, typing and
read receipts reaching the other user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    FullyReadEvent,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    ProfileGetDisplayNameResponse,
    ProfileSetDisplayNameResponse,
    ReceiptEvent,
    RegisterResponse,
    RoomCreateEvent,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomMemberEvent,
    RoomMessagesResponse,
    RoomMessageText,
    RoomPutStateResponse,
    RoomReadMarkersResponse,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
    UpdateReceiptMarkerResponse,
)

from tests.interop.conftest import RunningServer

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
MESSAGES = 100
# Bob's incremental syncs: a timeline limit above the number of messages, so a lagging
# sync loop can never legitimately skip any (a `limited` batch would be a real gap).
TIMELINE_FILTER = {"room": {"timeline": {"limit": MESSAGES + 20}}}
DEADLINE_S = 20.0  # for any one thing to reach the other user

T = TypeVar("T")


def expect(response: object, kind: type[T]) -> T:
    assert isinstance(response, kind), f"expected {kind.__name__}, got {response!r}"
    return response


def nio_client(server: RunningServer, user: str, store: Path) -> AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    return AsyncClient(
        server.url,
        f"@{user}:{server.server_name}",
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
    )


async def register_and_login(server: RunningServer, user: str, tmp_path: Path) -> AsyncClient:
    """Register through nio (the m.login.dummy flow), then log in from a second client: the
    client returned holds the login's device and token, not the registration's."""
    registering = nio_client(server, user, tmp_path / f"{user}-reg")
    try:
        registered = expect(await registering.register(user, PASSWORD, "nio reg"), RegisterResponse)
        assert registered.user_id == f"@{user}:{server.server_name}"
    finally:
        await registering.close()
    client = nio_client(server, user, tmp_path / user)
    logged_in = expect(await client.login(PASSWORD, device_name="nio"), LoginResponse)
    assert logged_in.user_id == registered.user_id
    assert logged_in.device_id != registered.device_id
    assert logged_in.access_token != registered.access_token
    return client


async def sync_until(
    client: AsyncClient,
    since: str,
    found: Callable[[SyncResponse], bool],
    what: str,
    sync_filter: dict[str, Any] | None = None,
) -> tuple[SyncResponse, str]:
    """Long-poll /sync from `since` until `found(response)` holds for one response; return it
    and the token after it."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        response = expect(
            await client.sync(timeout=2000, since=since, sync_filter=sync_filter), SyncResponse
        )
        since = response.next_batch
        if found(response):
            return response, since
    raise AssertionError(f"{client.user_id} never saw {what} within {DEADLINE_S}s")


def ephemeral(response: SyncResponse, room_id: str) -> list[Any]:
    room = response.rooms.join.get(room_id)
    return list(room.ephemeral) if room else []


@pytest.fixture
async def alice_and_bob(
    starling_server: RunningServer, tmp_path: Path
) -> AsyncIterator[tuple[AsyncClient, AsyncClient]]:
    alice = await register_and_login(starling_server, "alice", tmp_path)
    try:
        bob = await register_and_login(starling_server, "bob", tmp_path)
        try:
            yield alice, bob
        finally:
            await bob.close()
    finally:
        await alice.close()


async def test_two_nio_users_talk(
    starling_server: RunningServer,
    alice_and_bob: tuple[AsyncClient, AsyncClient],
    tmp_path: Path,
) -> None:
    alice, bob = alice_and_bob
    server = starling_server
    new_bob_device = nio_client(server, "bob", tmp_path / "bob-2")
    try:
        expect(await new_bob_device.login(PASSWORD, device_name="nio 2"), LoginResponse)
        await asyncio.wait_for(_conversation(alice, bob, new_bob_device), timeout=120)
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise
    finally:
        await new_bob_device.close()


async def _conversation(alice: AsyncClient, bob: AsyncClient, new_bob_device: AsyncClient) -> None:
    assert alice.user_id is not None and bob.user_id is not None
    bob_since = expect(await bob.sync(timeout=0), SyncResponse).next_batch

    # Alice creates a room and invites Bob; Bob sees the invite in /sync and joins.
    room_id = expect(await alice.room_create(name="interop"), RoomCreateResponse).room_id
    expect(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse)
    invited, bob_since = await sync_until(
        bob, bob_since, lambda r: room_id in r.rooms.invite, "the invite"
    )
    invite_events = invited.rooms.invite[room_id].invite_state
    assert any(
        isinstance(e, InviteMemberEvent) and e.state_key == bob.user_id and e.membership == "invite"
        for e in invite_events
    ), invite_events
    assert expect(await bob.join(room_id), JoinResponse).room_id == room_id
    joined, bob_since = await sync_until(
        bob, bob_since, lambda r: room_id in r.rooms.join, "the joined room"
    )
    assert room_id not in joined.rooms.invite

    # 100 messages, alternating senders. Bob long-polls concurrently and must receive every
    # one exactly once, in the order the server accepted them.
    received: list[RoomMessageText] = []

    async def bob_follows(since: str) -> str:
        deadline = time.monotonic() + 60
        while len(received) < MESSAGES and time.monotonic() < deadline:
            response = expect(
                await bob.sync(timeout=2000, since=since, sync_filter=TIMELINE_FILTER),
                SyncResponse,
            )
            since = response.next_batch
            room = response.rooms.join.get(room_id)
            if room is None:
                continue
            assert not room.timeline.limited, "an incremental sync skipped events"
            received.extend(e for e in room.timeline.events if isinstance(e, RoomMessageText))
        return since

    follower = asyncio.create_task(bob_follows(bob_since))
    sent: list[tuple[str, str, str]] = []  # (event_id, sender, body)
    for i in range(MESSAGES):
        sender = alice if i % 2 == 0 else bob
        body = f"message {i} from {sender.user_id}"
        content = {"msgtype": "m.text", "body": body}
        event_id = expect(
            await sender.room_send(room_id, "m.room.message", content), RoomSendResponse
        ).event_id
        sent.append((event_id, str(sender.user_id), body))
    bob_since = await follower
    assert len({e for e, _, _ in sent}) == MESSAGES
    assert [(e.event_id, e.sender, e.body) for e in received] == sent

    # Bob, on a new device, pages back from an initial sync's prev_batch to the room's
    # creation (nio's sync always sends the client's last token, hence a second client).
    latest = expect(
        await new_bob_device.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 1}}}),
        SyncResponse,
    )
    timeline = latest.rooms.join[room_id].timeline
    assert [e.event_id for e in timeline.events] == [sent[-1][0]]
    assert timeline.limited
    paged: list[Any] = []
    token: str | None = timeline.prev_batch
    pages = 0
    while token is not None and pages < 100:
        page = expect(
            await new_bob_device.room_messages(
                room_id, start=token, direction=MessageDirection.back, limit=7
            ),
            RoomMessagesResponse,
        )
        pages += 1
        paged.extend(page.chunk)
        if not page.chunk:
            break
        token = page.end
    paged_ids = [e.event_id for e in paged]
    assert len(paged_ids) == len(set(paged_ids)), "pagination returned duplicates"
    assert isinstance(paged[-1], RoomCreateEvent), "pagination stopped before the room's start"
    history = [e.event_id for e in reversed(paged) if isinstance(e, RoomMessageText)]
    assert [*history, sent[-1][0]] == [e for e, _, _ in sent]
    assert pages >= 15  # 100+ events in pages of 7: really paginated

    # Alice sets a display name; Bob sees it in her member event and in her profile.
    alice_name = "Alice Liddell"
    expect(await alice.set_displayname(alice_name), ProfileSetDisplayNameResponse)

    def alice_renamed(r: SyncResponse) -> bool:
        room = r.rooms.join.get(room_id)
        return room is not None and any(
            isinstance(e, RoomMemberEvent)
            and e.state_key == alice.user_id
            and e.membership == "join"
            and e.content.get("displayname") == alice_name
            for e in room.timeline.events
        )

    _, bob_since = await sync_until(bob, bob_since, alice_renamed, "Alice's new display name")
    assert bob.rooms[room_id].user_name(alice.user_id) == alice_name
    profile = expect(await bob.get_displayname(alice.user_id), ProfileGetDisplayNameResponse)
    assert profile.displayname == alice_name

    # Typing: Alice starts, Bob sees her typing; she stops, Bob sees nobody typing.
    def typing_users(r: SyncResponse) -> list[list[str]]:
        return [e.users for e in ephemeral(r, room_id) if isinstance(e, TypingNoticeEvent)]

    expect(await alice.room_typing(room_id, True, timeout=30000), RoomTypingResponse)
    _, bob_since = await sync_until(
        bob, bob_since, lambda r: [alice.user_id] in typing_users(r), "Alice typing"
    )
    expect(await alice.room_typing(room_id, False), RoomTypingResponse)
    _, bob_since = await sync_until(
        bob, bob_since, lambda r: [] in typing_users(r), "Alice stop typing"
    )

    # Read receipts, both ways: Bob through /read_markers (with m.fully_read, which becomes his
    # room account data), Alice through /receipt.
    alice_since = expect(await alice.sync(timeout=0), SyncResponse).next_batch
    last_id = sent[-1][0]
    expect(
        await bob.room_read_markers(room_id, fully_read_event=last_id, read_event=last_id),
        RoomReadMarkersResponse,
    )

    def receipt_from(user: str, event_id: str) -> Callable[[SyncResponse], bool]:
        def check(r: SyncResponse) -> bool:
            return any(
                receipt.user_id == user
                and receipt.event_id == event_id
                and receipt.receipt_type == "m.read"
                for e in ephemeral(r, room_id)
                if isinstance(e, ReceiptEvent)
                for receipt in e.receipts
            )

        return check

    await sync_until(alice, alice_since, receipt_from(bob.user_id, last_id), "Bob's receipt")

    def bob_fully_read(r: SyncResponse) -> bool:
        room = r.rooms.join.get(room_id)
        return room is not None and any(
            isinstance(e, FullyReadEvent) and e.event_id == last_id for e in room.account_data
        )

    _, bob_since = await sync_until(bob, bob_since, bob_fully_read, "his m.fully_read marker")

    earlier_id = sent[-3][0]  # a message Bob sent; Alice marks it read
    expect(await alice.update_receipt_marker(room_id, earlier_id), UpdateReceiptMarkerResponse)
    await sync_until(bob, bob_since, receipt_from(alice.user_id, earlier_id), "Alice's receipt")


async def test_long_state_history(
    starling_server: RunningServer, alice_and_bob: tuple[AsyncClient, AsyncClient]
) -> None:
    """More state changes than one delta chain of state groups holds (the store then
    writes a full snapshot): every change is accepted and the room's state stays right."""
    alice, bob = alice_and_bob
    assert bob.user_id is not None
    room_id = expect(await alice.room_create(name="busy"), RoomCreateResponse).room_id
    topics = [f"topic {i}" for i in range(80)]
    for topic in topics:
        expect(
            await alice.room_put_state(room_id, "m.room.topic", {"topic": topic}),
            RoomPutStateResponse,
        )
    expect(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse)
    assert expect(await bob.join(room_id), JoinResponse).room_id == room_id
    state = expect(await bob.room_get_state(room_id), RoomGetStateResponse).events
    by_key = {(e["type"], e["state_key"]): e["content"] for e in state}
    assert by_key[("m.room.topic", "")] == {"topic": topics[-1]}
    assert by_key[("m.room.name", "")] == {"name": "busy"}
    assert by_key[("m.room.member", bob.user_id)]["membership"] == "join"
    assert by_key[("m.room.member", alice.user_id)]["membership"] == "join"
    assert ("m.room.create", "") in by_key and ("m.room.power_levels", "") in by_key
