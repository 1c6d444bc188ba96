"""End-to-end encryption with matrix-nio (olm/megolm through vodozemac) against a real
`starling serve` (both engines): two encrypting clients upload device and one-time keys,
query and claim each other's keys, share megolm sessions over to-device messages, and
exchange encrypted messages both ways that each side decrypts from /sync, while the server
only ever stores m.room.encrypted events. A second device of Bob logs in later; once Alice's
client sees the device-list change, her new messages decrypt on that device too."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import ENCRYPTION_ENABLED

from tests.interop.conftest import RunningServer

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
DEADLINE_S = 30.0  # for any one expected state to be reached
MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"

T = TypeVar("T")


def expect(response: object, kind: type[T]) -> T:
    assert isinstance(response, kind), f"expected {kind.__name__}, got {response!r}"
    return response


def e2ee_client(server: RunningServer, user: str, store: Path) -> AsyncClient:
    store.mkdir(parents=True, exist_ok=True)
    return AsyncClient(
        server.url,
        f"@{user}:{server.server_name}",
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )


async def register(server: RunningServer, user: str, tmp_path: Path) -> None:
    """Register through nio's m.login.dummy flow from a throwaway client (its device is not
    one of the devices under test)."""
    registering = AsyncClient(
        server.url,
        f"@{user}:{server.server_name}",
        store_path=str(tmp_path),
        config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
    )
    try:
        registered = expect(await registering.register(user, PASSWORD, "reg"), RegisterResponse)
        assert registered.user_id == f"@{user}:{server.server_name}"
    finally:
        await registering.close()


async def login(server: RunningServer, user: str, store: Path, device_name: str) -> AsyncClient:
    client = e2ee_client(server, user, store)
    logged_in = expect(await client.login(PASSWORD, device_name=device_name), LoginResponse)
    assert logged_in.user_id == f"@{user}:{server.server_name}"
    assert client.olm is not None, "nio did not load its olm machine after login"
    return client


class Device:
    """One nio client driven by hand the way nio's sync_forever drives it: sync, then send
    queued to-device messages and upload / query / claim keys as nio asks."""

    def __init__(self, name: str, client: AsyncClient) -> None:
        self.name = name
        self.client = client
        # Every decrypted text message and every undecryptable megolm event seen in /sync.
        self.texts: list[RoomMessageText] = []
        self.undecrypted: list[MegolmEvent] = []
        self.uploads = 0
        self.otk_counts: list[int | None] = []  # signed_curve25519 counts, one per /sync
        self.device_lists_changed: set[str] = set()  # users named in device_lists.changed

    @property
    def user_id(self) -> str:
        assert self.client.user_id is not None
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        assert self.client.device_id is not None
        return str(self.client.device_id)

    def has(self, event_id: str) -> bool:
        """Whether this device received `event_id` through /sync, decrypted or not."""
        return any(e.event_id == event_id for e in [*self.texts, *self.undecrypted])

    def seen(self) -> str:
        texts = [(e.event_id, e.body, e.decrypted, e.source.get("type")) for e in self.texts]
        failed = [(e.event_id, e.session_id) for e in self.undecrypted]
        return f"{self.name} has texts {texts}, undecryptable {failed}"

    async def tick(self, timeout_ms: int = 1000) -> SyncResponse:
        client = self.client
        response = expect(await client.sync(timeout=timeout_ms), SyncResponse)
        self.device_lists_changed.update(response.device_list.changed)
        self.otk_counts.append(response.device_key_count.signed_curve25519)
        for room in response.rooms.join.values():
            for event in room.timeline.events:
                if isinstance(event, RoomMessageText):
                    self.texts.append(event)
                elif isinstance(event, MegolmEvent):
                    self.undecrypted.append(event)
        await client.send_to_device_messages()
        if client.should_upload_keys:
            expect(await client.keys_upload(), KeysUploadResponse)
            self.uploads += 1
        if client.should_query_keys:
            expect(await client.keys_query(), KeysQueryResponse)
        if client.should_claim_keys:
            claimed = await client.keys_claim(client.get_users_for_key_claiming())
            expect(claimed, KeysClaimResponse)
        return response


async def until(
    devices: Sequence[Device],
    done: Callable[[], bool],
    what: str | Callable[[], str],
    timeout_ms: int = 1000,
) -> None:
    """Tick every device in turn until `done()` holds; fail saying what never happened."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if done():
            return
        for device in devices:
            await device.tick(timeout_ms)
    if done():
        return
    names = ", ".join(d.name for d in devices)
    seen = "; ".join(d.seen() for d in devices)
    missing = what() if callable(what) else what
    raise AssertionError(f"within {DEADLINE_S}s of syncing {names}: never {missing} ({seen})")


async def raw_messages(server: RunningServer, token: str, room_id: str) -> list[dict[str, Any]]:
    """The room's whole timeline as the server stores it, newest first, through a plain
    /messages request (not nio, which would decrypt what it can)."""
    url = f"{server.url}/_matrix/client/v3/rooms/{room_id}/messages"
    events: list[dict[str, Any]] = []
    params = {"dir": "b", "limit": "50"}
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(
                url, params=params, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            events.extend(page["chunk"])
            if not page["chunk"] or "end" not in page:
                return events
            params = {**params, "from": page["end"]}
    raise AssertionError("/messages did not reach the start of the room in 20 pages")


@pytest.fixture
async def clients(starling_server: RunningServer) -> AsyncIterator[list[AsyncClient]]:
    """Closes every client the test opens (before the server stops)."""
    opened: list[AsyncClient] = []
    yield opened
    for client in opened:
        await client.close()


async def test_encrypted_conversation(
    starling_server: RunningServer, clients: list[AsyncClient], tmp_path: Path
) -> None:
    assert ENCRYPTION_ENABLED, "matrix-nio was installed without its e2e extra"
    server = starling_server
    started = time.monotonic()
    try:
        await asyncio.wait_for(_conversation(server, clients, tmp_path), timeout=100)
        assert "Traceback" not in server.log.read_text(errors="replace")
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise
    finally:
        print(f"{server.engine}: {time.monotonic() - started:.1f}s")


async def _conversation(server: RunningServer, clients: list[AsyncClient], tmp_path: Path) -> None:
    # 1. Alice and Bob register, log in with encrypting clients, and upload their device
    # keys and one-time keys after their first sync, as nio asks.
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice_client = await login(server, "alice", tmp_path / "alice", "alice e2ee")
    clients.append(alice_client)
    bob_client = await login(server, "bob", tmp_path / "bob", "bob e2ee")
    clients.append(bob_client)
    alice, bob = Device("alice", alice_client), Device("bob", bob_client)
    for device in (alice, bob):
        assert device.client.should_upload_keys, f"{device.name} has no keys to upload"
        await device.tick(timeout_ms=0)
        assert device.uploads == 1, f"{device.name} did not upload keys after its first sync"
        assert not device.client.should_upload_keys, f"{device.name} still wants to upload"

    # The server publishes what was uploaded: each side sees the other's device, with the
    # identity keys its olm account holds (nio verifies the self-signature when it stores it).
    queried = await _query(alice, [bob.user_id, alice.user_id])
    bob_keys = queried.device_keys[bob.user_id][bob.device_id]
    assert bob_client.olm is not None
    assert (
        bob_keys["keys"][f"ed25519:{bob.device_id}"]
        == bob_client.olm.account.identity_keys["ed25519"]
    )
    assert (
        bob_keys["keys"][f"curve25519:{bob.device_id}"]
        == (bob_client.olm.account.identity_keys["curve25519"])
    )
    assert set(bob_keys["algorithms"]) >= {OLM, MEGOLM}
    assert bob.device_id in alice.client.device_store[bob.user_id]

    # The one-time-key count the server reports in /sync is the number Bob uploaded.
    await bob.tick(timeout_ms=0)
    full = bob_client.olm.account.max_one_time_keys
    assert bob.otk_counts[-1] == full, (bob.otk_counts, full)

    # 2. Alice creates an encrypted room and invites Bob; Bob joins; both see the room as
    # encrypted with megolm.
    room_id = expect(
        await alice.client.room_create(
            name="secret",
            invite=[bob.user_id],
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
            ],
        ),
        RoomCreateResponse,
    ).room_id
    invited: list[Any] = []

    def bob_invited() -> bool:
        room = bob.client.invited_rooms.get(room_id)
        if room is None:
            return False
        invited.append(room)
        return True

    await until([bob], bob_invited, "saw the invite")
    assert bob.user_id in invited[0].invited_users, invited[0].invited_users
    assert expect(await bob.client.join(room_id), JoinResponse).room_id == room_id

    def both_joined_encrypted() -> bool:
        a, b = alice.client.rooms.get(room_id), bob.client.rooms.get(room_id)
        return (
            a is not None
            and b is not None
            and a.encrypted
            and b.encrypted
            and bob.user_id in a.users
            and alice.user_id in b.users
            and room_id in bob.client.rooms
            and room_id not in bob.client.invited_rooms
        )

    await until([alice, bob], both_joined_encrypted, "both saw the encrypted room with both in")
    assert alice.client.rooms[room_id].encrypted and bob.client.rooms[room_id].encrypted

    # 3. Encrypted messages both ways, taking turns; each side decrypts the other's from
    # /sync before answering.
    sent: list[tuple[str, Device, str]] = []  # (event_id, sender, plaintext body)
    for i in range(3):
        for speaker, listener in ((alice, bob), (bob, alice)):
            body = f"{speaker.name} secret {i}"
            event_id = expect(
                await speaker.client.room_send(
                    room_id,
                    "m.room.message",
                    {"msgtype": "m.text", "body": body},
                    ignore_unverified_devices=True,
                ),
                RoomSendResponse,
            ).event_id
            sent.append((event_id, speaker, body))
            await until(
                [listener, speaker],
                functools.partial(listener.has, event_id),
                f"received {speaker.name}'s {body!r} ({event_id}) as {listener.name}",
            )

    for device, other in ((alice, bob), (bob, alice)):
        failed = [e.event_id for e in device.undecrypted if e.sender == other.user_id]
        assert not failed, f"{device.name} could not decrypt {other.name}'s {failed}"
        expected = [(e, b) for e, s, b in sent if s is other]
        got = [(e.event_id, e.body) for e in device.texts if e.sender == other.user_id]
        assert got == expected, f"{device.name} decrypted {got}, expected {expected}"
        assert all(e.decrypted for e in device.texts if e.sender == other.user_id)
    sent_ids = {e: b for e, _, b in sent}

    # Alice claimed one of Bob's one-time keys to open an olm session with him (Bob answered
    # over that session, claiming none of hers): Bob's /sync count dropped by one, and he
    # uploaded a replacement.
    assert full - 1 in bob.otk_counts, bob.otk_counts
    assert bob.uploads == 2 and bob.otk_counts[-1] == full, (bob.uploads, bob.otk_counts)
    assert len(sent_ids) == 6

    # What the server stores is ciphertext only: every message is m.room.encrypted with
    # megolm, and no plaintext body appears anywhere in what the server returns.
    raw = await raw_messages(server, alice.client.access_token, room_id)
    by_id = {e["event_id"]: e for e in raw}
    assert set(sent_ids) <= set(by_id), "some sent events are missing from /messages"
    for event_id in sent_ids:
        stored = by_id[event_id]
        assert stored["type"] == "m.room.encrypted", stored
        assert stored["content"]["algorithm"] == MEGOLM, stored
        assert stored["content"]["ciphertext"], stored
        assert "body" not in stored["content"], stored
    assert not [e for e in raw if e["type"] == "m.room.message"], "plaintext message stored"
    raw_text = json.dumps(raw)
    for body in sent_ids.values():
        assert body not in raw_text, f"the server returned the plaintext {body!r}"

    # 4. Bob logs in on a second device, which uploads its keys. Alice's client learns of the
    # device-list change through /sync, queries Bob's keys, and her next message is shared
    # with, and decrypts on, the new device.
    bob2_client = await login(server, "bob", tmp_path / "bob-2", "bob second")
    clients.append(bob2_client)
    bob2 = Device("bob-2", bob2_client)
    assert bob2.device_id != bob.device_id
    await bob2.tick(timeout_ms=0)
    assert bob2.uploads == 1, "Bob's second device did not upload keys after its first sync"
    assert room_id in bob2.client.rooms and bob2.client.rooms[room_id].encrypted

    alice.device_lists_changed.clear()
    await until(
        [alice],
        lambda: bob2.device_id in alice.client.device_store[bob.user_id],
        "learned of Bob's second device (device_lists.changed, then /keys/query)",
    )
    assert bob.user_id in alice.device_lists_changed, "Alice was not told Bob's devices changed"
    assert bob2_client.olm is not None
    assert (
        alice.client.device_store[bob.user_id][bob2.device_id].ed25519
        == (bob2_client.olm.account.identity_keys["ed25519"])
    )

    later = "alice secret for both of Bob's devices"
    later_id = expect(
        await alice.client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": later},
            ignore_unverified_devices=True,
        ),
        RoomSendResponse,
    ).event_id

    def later_on(device: Device) -> bool:
        return any(e.event_id == later_id and e.body == later for e in device.texts)

    await until(
        [bob2, bob],
        lambda: later_on(bob2) and later_on(bob),
        f"decrypted Alice's {later!r} ({later_id}, sent after the second device appeared) "
        "on both of Bob's devices",
    )
    decrypted = next(e for e in bob2.texts if e.event_id == later_id)
    assert decrypted.decrypted
    assert decrypted.sender == alice.user_id
    raw_later = next(
        e
        for e in await raw_messages(server, bob2.client.access_token, room_id)
        if e["event_id"] == later_id
    )
    assert raw_later["type"] == "m.room.encrypted" and later not in json.dumps(raw_later)


async def _query(device: Device, users: list[str]) -> KeysQueryResponse:
    """A /keys/query for exactly `users`, through nio's API (so nio stores the devices)."""
    client = device.client
    assert client.olm is not None
    client.olm.users_for_key_query.update(users)
    return expect(await client.keys_query(), KeysQueryResponse)
