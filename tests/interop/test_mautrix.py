"""mautrix-python (`mautrix.client.Client`) against a real `starling serve` (both engines):
registration (m.login.dummy, inhibit_login) and password login, a room created with an invite,
room state read back, messages one way through mautrix's syncer and the other way through raw
`client.sync()`, display names through the profile, the member list and the sync loop, power
levels enforced on redaction, and redacted events read back stripped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mautrix.api import Method, Path
from mautrix.client import Client
from mautrix.client.state_store import MemoryStateStore, MemorySyncStore
from mautrix.errors import MatrixRequestError, MForbidden, MUserInUse
from mautrix.types import (
    EventID,
    EventType,
    Filter,
    FilterID,
    Membership,
    MessageEvent,
    PaginationDirection,
    RedactionEvent,
    RoomFilter,
    RoomID,
    RoomNameStateEventContent,
    RoomTopicStateEventContent,
    StateEvent,
    StrippedStateEvent,
    SyncToken,
    TextMessageEventContent,
    UserID,
)

from tests.interop.conftest import RunningServer

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
DEADLINE_S = 15.0  # for any one thing to reach the other user
MESSAGES = 10


async def register(server: RunningServer, user: str) -> UserID:
    """Register through mautrix's HTTP API (it has no register helper): the first request has
    no auth and gets the flows, the second completes m.login.dummy without logging in."""
    client = Client(base_url=server.url)
    try:
        with pytest.raises(MatrixRequestError) as first:
            await client.api.request(
                Method.POST, Path.v3.register, {"username": user, "password": PASSWORD}
            )
        assert first.value.http_status == 401
        registered = await client.api.request(
            Method.POST,
            Path.v3.register,
            {
                "username": user,
                "password": PASSWORD,
                "inhibit_login": True,
                "auth": {"type": "m.login.dummy"},
            },
        )
        assert registered["user_id"] == f"@{user}:{server.server_name}"
        assert "access_token" not in registered and "device_id" not in registered
        with pytest.raises(MUserInUse):
            await client.api.request(
                Method.POST,
                Path.v3.register,
                {"username": user, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
            )
        return UserID(registered["user_id"])
    finally:
        await client.api.session.close()


async def logged_in_client(server: RunningServer, user: str) -> Client:
    user_id = await register(server, user)
    client = Client(
        base_url=server.url, state_store=MemoryStateStore(), sync_store=MemorySyncStore()
    )
    login = await client.login(identifier=user, password=PASSWORD, device_name="mautrix")
    assert login.user_id == user_id and client.mxid == user_id
    assert login.device_id and client.device_id == login.device_id
    whoami = await client.whoami()
    assert (whoami.user_id, whoami.device_id) == (user_id, login.device_id)
    return client


@pytest.fixture
async def alice_and_bob(starling_server: RunningServer) -> AsyncIterator[tuple[Client, Client]]:
    clients: list[Client] = []
    try:
        clients.append(await logged_in_client(starling_server, "alice"))
        clients.append(await logged_in_client(starling_server, "bob"))
        yield clients[0], clients[1]
    finally:
        for client in clients:
            client.stop()
            await client.api.session.close()


class Seen:
    """Every event one client's syncer dispatches, and a way to wait for one."""

    def __init__(self, client: Client) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()
        client.add_event_handler(EventType.ALL, self._on_event)

    async def _on_event(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, what: str, predicate: Any) -> Any:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = next((e for e in self.events if predicate(e)), None)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the syncer never delivered {what} within {DEADLINE_S}s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


async def raw_sync_until(
    client: Client,
    since: SyncToken | None,
    filter_id: FilterID,
    room_id: RoomID,
    event_id: EventID,
    what: str,
) -> tuple[list[dict[str, Any]], SyncToken]:
    """Long-poll `client.sync()` until `event_id` is in `room_id`'s timeline; return every
    timeline event of that room seen on the way, and the token after them."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        data = await client.sync(since=since, timeout=2000, filter_id=filter_id)
        since = SyncToken(data["next_batch"])
        room = data.get("rooms", {}).get("join", {}).get(room_id)
        if room is not None:
            batch = room["timeline"]["events"]
            # A room joined since `since` always comes `limited` (as Synapse sends it);
            # a batch reaching back to the room's creation skipped nothing.
            whole = any(e["type"] == "m.room.create" for e in batch)
            assert whole or not room["timeline"].get("limited"), (
                "an incremental sync skipped events"
            )
            events.extend(batch)
        if any(e["event_id"] == event_id for e in events):
            return events, since
    raise AssertionError(f"{client.mxid} never saw {what} within {DEADLINE_S}s")


async def test_mautrix_client(
    starling_server: RunningServer, alice_and_bob: tuple[Client, Client]
) -> None:
    server = starling_server
    try:
        await asyncio.wait_for(_conversation(*alice_and_bob), timeout=60)
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise


async def _conversation(alice: Client, bob: Client) -> None:
    # Bob follows through mautrix's syncer (its own long-poll loop, events dispatched to
    # handlers); Alice through raw client.sync() calls.
    bob_seen = Seen(bob)
    bob_sync = bob.start(Filter(room=RoomFilter(timeline={"limit": 50})))
    # A timeline limit above everything sent, so a `limited` batch would be a real gap.
    alice_filter = await alice.create_filter(Filter(room=RoomFilter(timeline={"limit": 100})))
    alice_since = SyncToken((await alice.sync(timeout=0, filter_id=alice_filter))["next_batch"])

    room_id = await alice.create_room(
        name="mautrix interop", topic="first topic", invitees=[bob.mxid]
    )

    # The room's state as Alice created it.
    state = await alice.get_state(room_id)
    assert all(isinstance(e, StateEvent) for e in state)
    by_key = {(e.type, e.state_key): e for e in state}
    create = by_key[(EventType.ROOM_CREATE, "")]
    assert create.sender == alice.mxid
    assert by_key[(EventType.ROOM_NAME, "")].content.name == "mautrix interop"
    assert by_key[(EventType.ROOM_TOPIC, "")].content.topic == "first topic"
    assert by_key[(EventType.ROOM_MEMBER, alice.mxid)].content.membership == Membership.JOIN
    assert by_key[(EventType.ROOM_MEMBER, bob.mxid)].content.membership == Membership.INVITE
    levels = by_key[(EventType.ROOM_POWER_LEVELS, "")].content
    assert levels.get_user_level(bob.mxid) == 0 and levels.redact == 50
    if create.content.room_version == "12":  # creators' power is implicit, not in `users`
        assert alice.mxid not in levels.users
    else:
        assert levels.get_user_level(alice.mxid) == 100
    name = await alice.get_state_event(room_id, EventType.ROOM_NAME)
    assert isinstance(name, RoomNameStateEventContent) and name.name == "mautrix interop"

    # Bob's syncer delivers the invite: mautrix turns the invite member event (which must be
    # a full event in invite_state) into a StateEvent carrying the rest of the stripped state.
    invite = await bob_seen.wait_for(
        "the invite",
        lambda e: (
            isinstance(e, StateEvent)
            and e.type == EventType.ROOM_MEMBER
            and e.state_key == bob.mxid
            and e.content.membership == Membership.INVITE
            and e.room_id == room_id
        ),
    )
    assert invite.sender == alice.mxid and invite.event_id.startswith("$")
    stripped = {(e.type, e.state_key): e for e in invite.unsigned.invite_room_state}
    assert all(isinstance(e, StrippedStateEvent) for e in stripped.values())
    assert stripped[(EventType.ROOM_NAME, "")].content.name == "mautrix interop"
    assert stripped[(EventType.ROOM_CREATE, "")].content.room_version == create.content.room_version
    assert stripped[(EventType.ROOM_MEMBER, alice.mxid)].content.membership == Membership.JOIN
    assert await bob.join_room(room_id) == room_id
    await bob_seen.wait_for(
        "his join",
        lambda e: (
            isinstance(e, StateEvent)
            and e.type == EventType.ROOM_MEMBER
            and e.state_key == bob.mxid
            and e.content.membership == Membership.JOIN
        ),
    )
    members = await bob.get_joined_members(room_id)
    assert set(members) == {alice.mxid, bob.mxid}

    # Alice's messages reach Bob's syncer, every one, in order.
    sent = [await alice.send_text(room_id, f"alice {i}") for i in range(MESSAGES)]
    assert len(set(sent)) == MESSAGES
    await bob_seen.wait_for(
        "Alice's last message", lambda e: getattr(e, "event_id", None) == sent[-1]
    )
    received = [e for e in bob_seen.events if isinstance(e, MessageEvent) and e.room_id == room_id]
    assert [e.event_id for e in received] == sent
    assert [e.content.body for e in received] == [f"alice {i}" for i in range(MESSAGES)]
    assert all(isinstance(e.content, TextMessageEventContent) for e in received)
    assert all(e.sender == alice.mxid for e in received)

    # Bob's messages reach Alice's raw sync, in order, after everything she sent.
    replies = [await bob.send_text(room_id, f"bob {i}") for i in range(MESSAGES)]
    timeline, alice_since = await raw_sync_until(
        alice, alice_since, alice_filter, room_id, replies[-1], "Bob's last reply"
    )
    messages = [e for e in timeline if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in messages] == sent + replies
    assert [e["content"]["body"] for e in messages[MESSAGES:]] == [
        f"bob {i}" for i in range(MESSAGES)
    ]
    # Alice's own messages come with the transaction ID mautrix sent them under.
    assert all("transaction_id" in e.get("unsigned", {}) for e in messages[:MESSAGES])
    assert not any("transaction_id" in e.get("unsigned", {}) for e in messages[MESSAGES:])

    # State changes: a new topic, read back as content and through the state list.
    await alice.send_state_event(
        room_id, EventType.ROOM_TOPIC, RoomTopicStateEventContent(topic="second topic")
    )
    topic = await bob.get_state_event(room_id, EventType.ROOM_TOPIC)
    assert isinstance(topic, RoomTopicStateEventContent) and topic.topic == "second topic"
    state = await bob.get_state(room_id)
    topics = [e for e in state if e.type == EventType.ROOM_TOPIC]
    assert [e.content.topic for e in topics] == ["second topic"]
    assert {e.state_key for e in state if e.type == EventType.ROOM_MEMBER} == {
        alice.mxid,
        bob.mxid,
    }

    # Display name: the profile, the member list and Bob's syncer all see it.
    assert await bob.get_displayname(alice.mxid) in (None, "alice")
    await alice.set_displayname("Alice Liddell")
    assert await alice.get_displayname(alice.mxid) == "Alice Liddell"
    assert await bob.get_displayname(alice.mxid) == "Alice Liddell"
    assert (await bob.get_profile(alice.mxid)).displayname == "Alice Liddell"
    await bob_seen.wait_for(
        "Alice's new display name",
        lambda e: (
            isinstance(e, StateEvent)
            and e.type == EventType.ROOM_MEMBER
            and e.state_key == alice.mxid
            and e.content.displayname == "Alice Liddell"
        ),
    )
    members = await bob.get_joined_members(room_id)
    assert members[alice.mxid].displayname == "Alice Liddell"
    assert members[alice.mxid].membership == Membership.JOIN
    assert members[bob.mxid].displayname == "bob"  # the default: the localpart
    # A second identical set is a no-op for mautrix (check_current) and changes nothing.
    await alice.set_displayname("Alice Liddell")
    assert (await bob.get_joined_members(room_id))[alice.mxid].displayname == "Alice Liddell"

    # Redaction. Bob (power 0, redact needs 50) cannot redact Alice's message...
    target = sent[3]
    with pytest.raises(MForbidden):
        await bob.redact(room_id, target, reason="not mine")
    assert (await bob.get_event(room_id, target)).content.body == "alice 3"
    # ...but can redact his own, and Alice (power 100) can redact anyone's.
    own = await bob.redact(room_id, replies[0], reason="typo")
    redaction = await alice.redact(room_id, target, reason="oops")
    assert own != redaction
    seen_redaction = await bob_seen.wait_for(
        "the redaction", lambda e: getattr(e, "event_id", None) == redaction
    )
    assert isinstance(seen_redaction, RedactionEvent)
    assert seen_redaction.redacts == target and seen_redaction.content.reason == "oops"
    for event_id, by, reason in ((target, alice, "oops"), (replies[0], bob, "typo")):
        redacted = await bob.get_event(room_id, event_id)
        assert redacted.event_id == event_id
        assert redacted.content.serialize() == {}, "the redacted event kept its content"
        raw = await bob.api.request(Method.GET, Path.v3.rooms[room_id].event[event_id])
        because = raw["unsigned"]["redacted_because"]
        assert because["sender"] == by.mxid
        assert because["type"] == "m.room.redaction"
        assert because["content"]["reason"] == reason
        assert raw["content"] == {}
    untouched = await bob.get_event(room_id, sent[4])
    assert untouched.content.body == "alice 4"

    # Paging back from the end: the redacted message is there, stripped, between the others.
    page = await bob.get_messages(room_id, PaginationDirection.BACKWARD, limit=100)
    in_order = [e for e in reversed(page.events) if e.type == EventType.ROOM_MESSAGE]
    assert [e.event_id for e in in_order] == sent + replies
    bodies = [e.content.serialize().get("body") for e in in_order]
    assert bodies[3] is None and bodies[MESSAGES] is None
    assert bodies[4] == "alice 4" and bodies[-1] == f"bob {MESSAGES - 1}"
    assert page.events[-1].type == EventType.ROOM_CREATE

    bob.stop()
    assert bob_sync.done() or await asyncio.wait_for(bob_sync, 5) is None
