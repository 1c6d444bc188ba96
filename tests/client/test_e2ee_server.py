"""Starling's own client against a real `starling serve` (SQLite and PostgreSQL): two
Starling clients chat encrypted both ways; a Starling client and matrix-nio (olm/megolm,
E2E on) exchange encrypted messages both ways; a member who leaves cannot read what follows;
the store survives a restart; and the server only ever holds ciphertext."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    MemoryDownloadResponse,
    RoomEncryptedAudio,
    RoomEncryptedFile,
    RoomEncryptedImage,
    RoomEncryptedMedia,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment as nio_decrypt
from PIL import Image

from starling_client.client import Client, Message
from starling_client.crypto import MEGOLM
from starling_client.store import StoreError
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, Device, expect, raw_messages, register, until
from tests.interop.test_nio_e2ee import login as nio_login

pytestmark = pytest.mark.integration

PASSPHRASE = "client store passphrase"
DEADLINE_S = 30.0


@pytest.fixture
async def opened() -> AsyncIterator[list[Client | AsyncClient]]:
    """Closes every client a test opens, before the server stops."""
    clients: list[Client | AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def starling_login(
    server: RunningServer, user: str, store: Path, opened: list[Client | AsyncClient]
) -> Client:
    client = await Client.login(
        store, server.url, f"@{user}:{server.server_name}", PASSWORD, PASSPHRASE
    )
    opened.append(client)
    return client


async def sync_until(
    clients: list[Client], done: Callable[[], bool], what: str, *, others: list[Device] = ()
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if done():
            return
        for client in clients:
            await client.sync_once(timeout_ms=500)
        for device in others:
            await device.tick(timeout_ms=200)
    assert done(), f"within {DEADLINE_S}s: never {what}"


def texts(client: Client, room_id: str) -> list[Message]:
    return [m for m in client.timeline(room_id, limit=1000) if m.type == "m.room.message"]


def has_text(client: Client, room_id: str, event_id: str, body: str) -> bool:
    return any(m.event_id == event_id and m.body == body for m in texts(client, room_id))


def nio_has(device: Device, event_id: str, body: str) -> bool:
    return any(e.event_id == event_id and e.body == body and e.decrypted for e in device.texts)


async def assert_ciphertext_only(
    server: RunningServer, token: str, room_id: str, bodies: list[str]
) -> None:
    raw = await raw_messages(server, token, room_id)
    assert not [e for e in raw if e["type"] == "m.room.message"], "plaintext message stored"
    encrypted = [e for e in raw if e["type"] == "m.room.encrypted"]
    assert len(encrypted) >= len(bodies)
    assert all(e["content"]["algorithm"] == MEGOLM for e in encrypted)
    dumped = json.dumps(raw)
    for body in bodies:
        assert body not in dumped, f"the server returned the plaintext {body!r}"
    if server.engine == "sqlite":
        for path in server.log.parent.joinpath("server").rglob("*"):
            if path.is_file() and path.suffix != ".log":
                data = path.read_bytes()
                for body in bodies:
                    assert body.encode() not in data, f"{body!r} found in {path}"


async def test_two_starling_clients_chat_encrypted(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    try:
        await asyncio.wait_for(_two_starling(server, tmp_path, opened), timeout=120)
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise


async def _two_starling(server: RunningServer, tmp_path: Path, opened: list) -> None:
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice = await starling_login(server, "alice", tmp_path / "alice", opened)
    bob = await starling_login(server, "bob", tmp_path / "bob", opened)
    assert alice.crypto.device_keys_uploaded and bob.crypto.device_keys_uploaded

    room_id = await alice.create_room(name="plans", invite=[bob.user_id])
    assert alice.rooms[room_id].encrypted
    await sync_until([bob], lambda: bob.rooms.get(room_id) is not None, "Bob saw the invite")
    assert bob.rooms[room_id].membership == "invite"
    await bob.join(room_id)
    assert bob.rooms[room_id].encrypted, "Bob did not learn the room is encrypted"
    await sync_until(
        [alice],
        lambda: alice.rooms[room_id].members.get(bob.user_id) == "join",
        "Alice saw Bob join",
    )

    sent: list[str] = []
    for i in range(2):
        for speaker, listener in ((alice, bob), (bob, alice)):
            body = f"{speaker.user_id} secret {i}"
            event_id = await speaker.send_text(room_id, body)
            sent.append(body)
            await sync_until(
                [listener, speaker],
                functools.partial(has_text, listener, room_id, event_id, body),
                f"{listener.user_id} decrypted {body!r}",
            )
            got = next(m for m in texts(listener, room_id) if m.event_id == event_id)
            assert got.encrypted and got.sender == speaker.user_id
            assert got.sender_device == speaker.device_id
    # Each side decrypts its own messages too.
    own = [m.body for m in texts(alice, room_id) if m.sender == alice.user_id]
    assert own == [f"{alice.user_id} secret 0", f"{alice.user_id} secret 1"]
    await assert_ciphertext_only(server, alice.session.access_token, room_id, sent)

    # A restart from the store keeps the session and the keys: Bob reopens and reads on.
    await bob.close()
    opened.remove(bob)
    with pytest.raises(StoreError):
        Client.open(tmp_path / "bob", "wrong passphrase")
    bob = Client.open(tmp_path / "bob", PASSPHRASE)
    opened.append(bob)
    after = "after Bob's restart"
    event_id = await alice.send_text(room_id, after)
    await sync_until(
        [bob], lambda: has_text(bob, room_id, event_id, after), "Bob decrypted after restart"
    )
    reply = "Bob answers from the reopened store"
    reply_id = await bob.send_text(room_id, reply)
    await sync_until(
        [alice], lambda: has_text(alice, room_id, reply_id, reply), "Alice decrypted Bob's reply"
    )

    # A burst larger than a sync's timeline (the server sends the newest few, `limited`):
    # Bob's next sync fills the gap from /messages, so none is missed.
    burst = [await alice.send_text(room_id, f"burst {i}") for i in range(25)]
    got = await bob.sync_once(timeout_ms=0)
    assert [m.event_id for m in got if m.body and m.body.startswith("burst ")] == burst

    # Carol joins then leaves; Alice's next message uses a new session Carol never gets.
    await register(server, "carol", tmp_path / "carol-reg")
    carol = await starling_login(server, "carol", tmp_path / "carol", opened)
    await alice.invite(room_id, carol.user_id)
    await carol.join(room_id)
    await sync_until(
        [alice],
        lambda: alice.rooms[room_id].members.get(carol.user_id) == "join",
        "Alice saw Carol join",
    )
    hello = "hello carol"
    hello_id = await alice.send_text(room_id, hello)
    await sync_until([carol], lambda: has_text(carol, room_id, hello_id, hello), "Carol decrypted")
    first_session = alice.crypto.outbound[room_id].session_id
    await carol.api.leave(room_id)
    await sync_until(
        [alice],
        lambda: alice.rooms[room_id].members.get(carol.user_id) == "leave",
        "Alice saw Carol leave",
    )
    secret = "after carol left"
    secret_id = await alice.send_text(room_id, secret)
    assert alice.crypto.outbound[room_id].session_id != first_session
    await sync_until([bob], lambda: has_text(bob, room_id, secret_id, secret), "Bob decrypted")
    assert all(key[1] != alice.crypto.outbound[room_id].session_id for key in carol.crypto.inbound)


async def test_starling_client_and_nio_exchange_encrypted_messages(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    try:
        await asyncio.wait_for(_with_nio(server, tmp_path, opened), timeout=120)
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise


async def _with_nio(server: RunningServer, tmp_path: Path, opened: list) -> None:
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "nina", tmp_path / "nina-reg")
    alice = await starling_login(server, "alice", tmp_path / "alice", opened)
    nio_client = await nio_login(server, "nina", tmp_path / "nina", "nina nio")
    opened.append(nio_client)
    nina = Device("nina", nio_client)
    await nina.tick(timeout_ms=0)
    assert nina.uploads == 1

    # Alice (Starling) creates the encrypted room; Nina (nio) joins.
    room_id = await alice.create_room(name="with nio", invite=[nina.user_id])
    await until([nina], lambda: room_id in nina.client.invited_rooms, "Nina saw the invite")
    expect(await nina.client.join(room_id), JoinResponse)
    await sync_until(
        [alice],
        lambda: (
            alice.rooms[room_id].members.get(nina.user_id) == "join"
            and room_id in nina.client.rooms
            and nina.client.rooms[room_id].encrypted
        ),
        "both saw Nina join the encrypted room",
        others=[nina],
    )

    sent: list[str] = []
    for i in range(2):
        # Starling → nio
        body = f"from starling {i}"
        event_id = await alice.send_text(room_id, body)
        sent.append(body)
        await until(
            [nina],
            functools.partial(nio_has, nina, event_id, body),
            f"nio decrypted {body!r}",
        )
        # nio → Starling
        body = f"from nio {i}"
        answer = expect(
            await nina.client.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": body},
                ignore_unverified_devices=True,
            ),
            RoomSendResponse,
        )
        sent.append(body)
        await sync_until(
            [alice],
            functools.partial(has_text, alice, room_id, answer.event_id, body),
            f"Starling decrypted nio's {body!r}",
            others=[nina],
        )
        got = next(m for m in texts(alice, room_id) if m.event_id == answer.event_id)
        assert got.encrypted and got.sender == nina.user_id and got.sender_device == nina.device_id
    assert not [e for e in nina.undecrypted if e.sender == alice.user_id]
    await assert_ciphertext_only(server, alice.session.access_token, room_id, sent)

    # nio creates a room (its own m.room.encryption) and Starling joins and talks there too.
    created = await nina.client.room_create(
        name="nio's room",
        invite=[alice.user_id],
        initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
        ],
    )
    nio_room = created.room_id
    await sync_until([alice], lambda: nio_room in alice.rooms, "Alice saw nio's invite")
    await alice.join(nio_room)
    assert alice.rooms[nio_room].encrypted
    body = "starling in nio's room"
    event_id = await alice.send_text(nio_room, body)
    await until(
        [nina],
        lambda: any(e.event_id == event_id and e.body == body for e in nina.texts),
        "nio decrypted Starling's message in its own room",
    )


class MediaDevice(Device):
    """A nio device that also keeps every timeline event (encrypted media included)."""

    def __init__(self, name: str, client: AsyncClient) -> None:
        super().__init__(name, client)
        self.events: list[object] = []

    async def tick(self, timeout_ms: int = 1000) -> SyncResponse:
        response = await super().tick(timeout_ms)
        for room in response.rooms.join.values():
            self.events.extend(room.timeline.events)
        return response


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def opus_file(seconds: int) -> bytes:
    def page(granule: int, payload: bytes, seq: int) -> bytes:
        header = b"OggS\x00" + bytes([2 if seq == 0 else 0])
        header += struct.pack("<qIII", granule, 7, seq, 0)
        return header + bytes([1, len(payload)]) + payload

    head = b"OpusHead\x01\x01" + struct.pack("<HI", 312, 48000) + b"\0\0\0"
    body = b"voice " * 30
    return page(0, head, 0) + page(0, b"OpusTags", 1) + page(312 + 48000 * seconds, body, 2)


async def test_encrypted_attachments_with_nio(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    try:
        await asyncio.wait_for(_attachments(server, tmp_path, opened), timeout=120)
    except BaseException:
        print(f"--- starling serve ({server.engine}) log tail ---\n{server.log_tail()}")
        raise


async def _attachments(server: RunningServer, tmp_path: Path, opened: list) -> None:
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "nina", tmp_path / "nina-reg")
    alice = await starling_login(server, "alice", tmp_path / "alice", opened)
    nio_client = await nio_login(server, "nina", tmp_path / "nina", "nina nio")
    opened.append(nio_client)
    nina = MediaDevice("nina", nio_client)
    await nina.tick(timeout_ms=0)
    room_id = await alice.create_room(invite=[nina.user_id])
    await until([nina], lambda: room_id in nina.client.invited_rooms, "Nina saw the invite")
    expect(await nina.client.join(room_id), JoinResponse)
    await sync_until(
        [alice],
        lambda: alice.rooms[room_id].members.get(nina.user_id) == "join",
        "Alice saw Nina join",
        others=[nina],
    )

    # Starling → nio: an image (with an encrypted thumbnail), a voice message, a file.
    image = png(1200, 900)
    voice = opus_file(3)
    document = b"quarterly numbers, confidential " * 100
    files = tmp_path / "files"
    files.mkdir()
    (files / "photo.png").write_bytes(image)
    (files / "memo.ogg").write_bytes(voice)
    (files / "report.txt").write_bytes(document)
    image_id = await alice.send_file(room_id, files / "photo.png")
    voice_id = await alice.send_voice(room_id, files / "memo.ogg")
    file_id = await alice.send_file(room_id, files / "report.txt")

    def received(event_id: str) -> RoomEncryptedMedia | None:
        for e in nina.events:
            if isinstance(e, RoomEncryptedMedia) and e.event_id == event_id:
                return e
        return None

    await until(
        [nina],
        lambda: all(received(e) for e in (image_id, voice_id, file_id)),
        "nio received the three encrypted attachments",
    )
    got_image, got_voice, got_file = (received(e) for e in (image_id, voice_id, file_id))
    assert isinstance(got_image, RoomEncryptedImage)
    assert isinstance(got_voice, RoomEncryptedAudio)
    assert isinstance(got_file, RoomEncryptedFile)

    async def nio_fetch(url: str, key: dict, hashes: dict, iv: str) -> bytes:
        downloaded = await nina.client.download(mxc=url)
        assert isinstance(downloaded, MemoryDownloadResponse), downloaded
        return nio_decrypt(downloaded.body, key["k"], hashes["sha256"], iv)

    for event, plain in ((got_image, image), (got_voice, voice), (got_file, document)):
        assert event.decrypted
        assert await nio_fetch(event.url, event.key, event.hashes, event.iv) == plain
    source = got_image.source["content"]
    thumb = source["info"]["thumbnail_file"]
    thumbnail = await nio_fetch(thumb["url"], thumb["key"], thumb["hashes"], thumb["iv"])
    with Image.open(io.BytesIO(thumbnail)) as t:
        assert t.size == (800, 600)
    assert source["info"]["w"] == 1200 and source["info"]["h"] == 900
    audio = got_voice.source["content"]
    assert "org.matrix.msc3245.voice" in audio
    assert audio["info"]["duration"] == 3000 and audio["info"]["mimetype"] == "audio/ogg"

    # nio → Starling: an encrypted image, voice message and file uploaded and sent by nio.
    nio_doc = b"nio's secret attachment " * 50
    nio_image = png(64, 48)
    nio_voice = opus_file(2)
    for msgtype, body, mimetype, data, extra in (
        ("m.image", "nio.png", "image/png", nio_image, {"info": {"w": 64, "h": 48}}),
        (
            "m.audio",
            "nio.ogg",
            "audio/ogg",
            nio_voice,
            {
                "info": {"duration": 2000},
                "org.matrix.msc3245.voice": {},
                "org.matrix.msc1767.audio": {"duration": 2000},
            },
        ),
        ("m.file", "nio.txt", "text/plain", nio_doc, {}),
    ):
        uploaded, keys = await nina.client.upload(
            io.BytesIO(data), mimetype, body, encrypt=True, filesize=len(data)
        )
        assert isinstance(uploaded, UploadResponse) and keys is not None
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": body,
            "file": {**keys, "url": uploaded.content_uri},
            **extra,
        }
        content["info"] = {**content.get("info", {}), "mimetype": mimetype, "size": len(data)}
        sent = await nina.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        sent_id = expect(sent, RoomSendResponse).event_id
        await sync_until(
            [alice],
            lambda sent_id=sent_id: any(m.event_id == sent_id for m in texts(alice, room_id)),
            f"Starling received nio's {body}",
            others=[nina],
        )
        message = next(m for m in texts(alice, room_id) if m.event_id == sent_id)
        assert message.encrypted and message.msgtype == msgtype
        assert await alice.download(message) == data
        if msgtype == "m.audio":
            assert "org.matrix.msc3245.voice" in message.content

    # The server's media holds only ciphertext.
    await assert_ciphertext_only(server, alice.session.access_token, room_id, [])
    if server.engine == "sqlite":
        stored = b"".join(p.read_bytes() for p in (tmp_path / "server").rglob("*") if p.is_file())
        for plain in (document[:64], nio_doc[:48], b"voice voice voice", image[-64:]):
            assert plain not in stored
