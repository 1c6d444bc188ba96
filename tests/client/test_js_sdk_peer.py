"""Starling's own client and matrix-js-sdk with Rust crypto (the stack Element Web runs on)
through a real `starling serve` (both engines), the JS side driven by
tests/interop/js/peer.mjs: encrypted messages both ways, and encrypted images and voice
messages both ways (js-sdk's side encrypts and decrypts them with WebCrypto, Element's
way).

Needs Node.js and `make dev-js`; skipped without them, except in CI."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from starling_client.client import Client
from tests.client.test_e2ee_server import has_text, opus_file, png
from tests.interop.conftest import RunningServer
from tests.interop.test_js_sdk import JS_DIR, node_or_skip
from tests.interop.test_nio_e2ee import PASSWORD, register

pytestmark = pytest.mark.integration

DEADLINE_S = 40.0


class Peer:
    """The node process: JSON lines in, JSON lines out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.used: set[int] = set()  # indexes of lines expect() already returned

    async def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for index, line in enumerate(self.lines):
            if index not in self.used and pred(line):
                self.used.add(index)
                return line
        deadline = time.monotonic() + DEADLINE_S
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(
                    self.proc.stdout.readline(), deadline - time.monotonic()
                )
            except TimeoutError:
                break
            if not raw:
                break
            line = json.loads(raw)
            self.lines.append(line)
            if "error" in line:
                raise AssertionError(f"js-sdk peer: {line['error']}")
            if pred(line):
                self.used.add(len(self.lines) - 1)
                return line
        raise AssertionError(f"within {DEADLINE_S}s the js-sdk peer never {what}: {self.lines}")

    def event(self, body: str) -> Callable[[dict[str, Any]], bool]:
        return lambda line: line.get("event", {}).get("body") == body


@pytest.fixture
async def peer_process(
    starling_server: RunningServer, tmp_path: Path
) -> AsyncIterator[Callable[[str], Any]]:
    node = node_or_skip()
    started: list[asyncio.subprocess.Process] = []
    opened: list[Any] = []

    async def start(user: str) -> Peer:
        log = await asyncio.to_thread(open, tmp_path / f"{user}-node.log", "wb")
        opened.append(log)
        proc = await asyncio.create_subprocess_exec(
            node,
            str(JS_DIR / "peer.mjs"),
            starling_server.url,
            user,
            PASSWORD,
            cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        started.append(proc)
        return Peer(proc)

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for log in opened:
        log.close()


async def test_starling_and_js_sdk_exchange_encrypted_messages_and_media(
    starling_server: RunningServer, tmp_path: Path, peer_process: Callable[[str], Any]
) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "jay", tmp_path / "jay-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, "pw")
    try:
        peer: Peer = await peer_process("jay")
        ready = (await peer.expect(lambda x: "ready" in x, "started"))["ready"]
        jay = ready["user_id"]
        room_id = await alice.create_room(name="with js", invite=[jay])
        deadline = time.monotonic() + DEADLINE_S
        while alice.rooms[room_id].members.get(jay) != "join" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=500)
        assert alice.rooms[room_id].members.get(jay) == "join", "js-sdk never joined"

        for i in range(2):
            body = f"starling to js {i}"
            event_id = await alice.send_text(room_id, body)
            got = (await peer.expect(peer.event(body), f"decrypted {body!r}"))["event"]
            assert got["event_id"] == event_id and got["wire_type"] == "m.room.encrypted"
            assert got["sender"] == alice.user_id

            body = f"js to starling {i}"
            await peer.send({"cmd": "send", "room_id": room_id, "body": body})
            sent = (await peer.expect(lambda x: "sent" in x, "sent"))["sent"]
            deadline = time.monotonic() + DEADLINE_S
            while not has_text(alice, room_id, sent, body) and time.monotonic() < deadline:
                await alice.sync_once(timeout_ms=500)
            assert has_text(alice, room_id, sent, body), f"Starling never decrypted {body!r}"
            message = next(m for m in alice.timeline(room_id) if m.event_id == sent)
            assert message.encrypted and message.sender == jay

        # An encrypted image and a voice message, decrypted by WebCrypto on the JS side.
        image = png(900, 700)
        await asyncio.to_thread((tmp_path / "pic.png").write_bytes, image)
        await asyncio.to_thread((tmp_path / "memo.ogg").write_bytes, opus_file(2))
        await alice.send_file(room_id, tmp_path / "pic.png")
        got = (await peer.expect(peer.event("pic.png"), "received the image"))["event"]
        assert got["msgtype"] == "m.image" and got["wire_type"] == "m.room.encrypted"
        assert got["info"]["w"] == 900 and "thumbnail_file" in got["info"]
        await peer.send({"cmd": "download", "file": got["file"]})
        downloaded = await peer.expect(lambda x: "downloaded" in x, "downloaded the image")
        assert base64.b64decode(downloaded["downloaded"]) == image
        await alice.send_voice(room_id, tmp_path / "memo.ogg")
        got = (await peer.expect(peer.event("memo.ogg"), "received the voice message"))["event"]
        assert got["msgtype"] == "m.audio" and got["voice"] and got["info"]["duration"] == 2000

        # js-sdk → Starling: an image and a voice message encrypted by WebCrypto.
        voice = opus_file(1)
        for msgtype, body, mimetype, data, info, is_voice in (
            ("m.image", "js.png", "image/png", png(40, 30), {"w": 40, "h": 30}, False),
            ("m.audio", "js.ogg", "audio/ogg", voice, {"duration": 1000}, True),
        ):
            await peer.send(
                {
                    "cmd": "send_media",
                    "room_id": room_id,
                    "msgtype": msgtype,
                    "body": body,
                    "mimetype": mimetype,
                    "data": base64.b64encode(data).decode(),
                    "info": info,
                    "voice": is_voice,
                }
            )
            sent = (await peer.expect(lambda x: "sent" in x, f"sent {body}"))["sent"]
            deadline = time.monotonic() + DEADLINE_S
            while not any(m.event_id == sent for m in alice.timeline(room_id)):
                assert time.monotonic() < deadline, f"Starling never decrypted {body}"
                await alice.sync_once(timeout_ms=500)
            message = next(m for m in alice.timeline(room_id) if m.event_id == sent)
            assert message.encrypted and message.msgtype == msgtype and message.sender == jay
            assert await alice.download(message) == data
            if is_voice:
                assert "org.matrix.msc3245.voice" in message.content
        await peer.send({"cmd": "exit"})
    finally:
        await alice.close()


async def test_key_backups_cross_between_starling_and_js_sdk(
    starling_server: RunningServer, tmp_path: Path, peer_process: Callable[[str], Any]
) -> None:
    """A backup made by Starling is restored by a new js-sdk device of the same user (which
    then reads the history), and a backup made by js-sdk is restored by a new Starling
    device (which then reads the history)."""
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "jay", tmp_path / "jay-reg")

    # Starling → js-sdk.
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, "pw")
    try:
        room_id = await alice.create_room(name="alice's notes")
        for i in range(2):
            await alice.send_text(room_id, f"alice history {i}")
        recovery_key = await alice.create_backup()
    finally:
        await alice.close()
    alice_js: Peer = await peer_process("alice")
    await alice_js.expect(lambda x: "ready" in x, "started")
    await alice_js.send({"cmd": "restore_backup", "recovery_key": recovery_key})
    restored = await alice_js.expect(lambda x: "restored" in x, "restored the backup")
    assert restored["restored"] >= 1
    for i in range(2):
        got = (await alice_js.expect(alice_js.event(f"alice history {i}"), "decrypted history"))[
            "event"
        ]
        assert got["wire_type"] == "m.room.encrypted"
    await alice_js.send({"cmd": "exit"})

    # js-sdk → Starling.
    jay_js: Peer = await peer_process("jay")
    ready = (await jay_js.expect(lambda x: "ready" in x, "started"))["ready"]
    helper = await Client.login(tmp_path / "helper", server.url, "alice", PASSWORD, "pw")
    try:
        room_id = await helper.create_room(name="jay and alice", invite=[ready["user_id"]])
        deadline = time.monotonic() + DEADLINE_S
        while helper.rooms[room_id].members.get(ready["user_id"]) != "join":
            assert time.monotonic() < deadline, "js-sdk never joined"
            await helper.sync_once(timeout_ms=300)
        for i in range(2):
            await jay_js.send({"cmd": "send", "room_id": room_id, "body": f"jay history {i}"})
            await jay_js.expect(lambda x: "sent" in x, "sent")
        await jay_js.send({"cmd": "make_backup", "sessions": 1})
        jay_key = (await jay_js.expect(lambda x: "recovery_key" in x, "made a backup"))[
            "recovery_key"
        ]
    finally:
        await helper.close()
    await jay_js.send({"cmd": "exit"})
    jay = await Client.login(tmp_path / "jay", server.url, "jay", PASSWORD, "pw")
    try:
        assert await jay.restore_backup(jay_key) >= 1
        bodies = {m.body for m in jay.timeline(room_id)}
        if not {"jay history 0", "jay history 1"} <= bodies:
            await jay.load_history(room_id)
            bodies = {m.body for m in jay.timeline(room_id)}
        assert {"jay history 0", "jay history 1"} <= bodies, bodies
    finally:
        await jay.close()


async def test_sas_verification_with_js_sdk(
    starling_server: RunningServer, tmp_path: Path, peer_process: Callable[[str], Any]
) -> None:
    """Starling requests a verification of a js-sdk (Rust crypto) device the way Element
    does (request, ready, start); js-sdk accepts, both show the same emoji and decimals, and
    each ends with the other's device verified — and, both having cross-signing (Starling's
    set up at login, js-sdk's by bootstrapCrossSigning with the password), each user
    cross-signing-verified by the other: the MACs carried the master keys and each side
    signed the other's with its user-signing key."""
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "jay", tmp_path / "jay-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, "pw")
    try:
        peer: Peer = await peer_process("jay")
        ready = (await peer.expect(lambda x: "ready" in x, "started"))["ready"]
        jay, jay_device = ready["user_id"], ready["device_id"]
        # Rust crypto keeps device data only for users it shares an encrypted room with.
        room_id = await alice.create_room(invite=[jay])
        deadline = time.monotonic() + DEADLINE_S
        while alice.rooms[room_id].members.get(jay) != "join" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        await peer.send({"cmd": "bootstrap_cross_signing"})
        assert (await peer.expect(lambda x: "cross_signing" in x, "bootstrapped"))["cross_signing"]
        jay_devices = {d["device_id"]: d for d in await alice.devices(jay)}
        assert jay_devices[jay_device]["cross_signed"] and not jay_devices[jay_device]["trusted"]
        assert alice.user_trust(jay) == "unverified"
        await peer.send({"cmd": "trust", "user_id": alice.user_id, "device_id": alice.device_id})
        before = (await peer.expect(lambda x: "trust" in x, "saw Alice's identity"))["trust"]
        assert before["device_signed_by_owner"] and not before["cross_signing_verified"]
        await peer.send(
            {"cmd": "await_verification", "user_id": alice.user_id, "device_id": alice.device_id}
        )
        await peer.expect(lambda x: "waiting" in x, "knew Alice's device")
        txn = await alice.request_verification(jay, jay_device)
        deadline = time.monotonic() + DEADLINE_S
        while txn not in alice.verifications and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert txn in alice.verifications, f"js-sdk never answered ready: {peer.lines}"
        sas = alice.verifications[txn]
        while sas.state not in ("keys", "cancelled") and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert sas.state == "keys", (sas.cancel_code, sas.cancel_reason)
        shown = (await peer.expect(lambda x: "sas" in x, "showed the emoji"))["sas"]
        assert [e for e, _ in shown["emoji"]] == [e for e, _ in sas.emoji()]
        assert tuple(shown["decimal"]) == sas.decimals()
        await alice.confirm_verification(sas)
        while not sas.verified and sas.state != "cancelled" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert sas.verified, (sas.cancel_code, sas.cancel_reason)
        assert alice.crypto.devices[jay][jay_device].verified
        assert (await peer.expect(lambda x: "verified" in x, "finished"))["verified"] is True
        # Cross-signing both ways.
        assert sas.master_verified and alice.user_trust(jay) == "verified"
        await peer.send(
            {
                "cmd": "trust",
                "user_id": alice.user_id,
                "device_id": alice.device_id,
                "wait": True,
            }
        )
        after = (await peer.expect(lambda x: "trust" in x, "re-checked Alice"))["trust"]
        assert after["cross_signing_verified"], after
        assert after["device_cross_signing_verified"], after
        # Alice's signature on Jay's master key is on the server: a new Starling device of
        # Alice's that takes her keys from secret storage trusts Jay without a SAS.
        recovery_key = await alice.create_backup()
        alice2 = await Client.login(tmp_path / "alice2", server.url, "alice", PASSWORD, "pw")
        try:
            await alice2.restore_backup(recovery_key)
            devices = {d["device_id"]: d for d in await alice2.devices(jay)}
            assert alice2.user_trust(jay) == "verified"
            assert devices[jay_device]["trusted"] and not devices[jay_device]["verified"]
        finally:
            await alice2.close()
        await peer.send({"cmd": "exit"})
    finally:
        await alice.close()


async def test_js_sdk_starts_the_sas_and_starling_answers(
    starling_server: RunningServer, tmp_path: Path, peer_process: Callable[[str], Any]
) -> None:
    """The other way round: js-sdk (Rust crypto) requests and starts the verification,
    Starling answers `ready` and accepts; the same emoji on both sides, each device verified
    at the other."""
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "jay", tmp_path / "jay-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, "pw")
    try:
        peer: Peer = await peer_process("jay")
        ready = (await peer.expect(lambda x: "ready" in x, "started"))["ready"]
        jay, jay_device = ready["user_id"], ready["device_id"]
        room_id = await alice.create_room(invite=[jay])
        deadline = time.monotonic() + DEADLINE_S
        while alice.rooms[room_id].members.get(jay) != "join" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        await peer.send({"cmd": "verify", "user_id": alice.user_id, "device_id": alice.device_id})
        while not alice.incoming_verifications(jay) and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        incoming = alice.incoming_verifications(jay)
        assert incoming, f"js-sdk's request never came: {peer.lines}"
        txn = incoming[0]
        await alice.accept_verification(txn)
        while txn not in alice.verifications and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        sas = alice.verifications[txn]
        while sas.state not in ("keys", "cancelled") and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert sas.state == "keys" and not sas.we_started, (sas.cancel_code, sas.cancel_reason)
        shown = (await peer.expect(lambda x: "sas" in x, "showed the emoji"))["sas"]
        assert [e for e, _ in shown["emoji"]] == [e for e, _ in sas.emoji()]
        await alice.confirm_verification(sas)
        while not sas.verified and sas.state != "cancelled" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert sas.verified, (sas.cancel_code, sas.cancel_reason)
        assert alice.crypto.devices[jay][jay_device].verified
        assert (await peer.expect(lambda x: "verified" in x, "finished"))["verified"] is True
        await peer.send({"cmd": "exit"})
    finally:
        await alice.close()
