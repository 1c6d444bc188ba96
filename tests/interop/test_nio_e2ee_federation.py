"""End-to-end encryption across two real servers with matrix-nio (olm/megolm through
vodozemac), both engines: Alice on server a and Bob on server b query and claim each
other's keys over federation, share megolm sessions through to-device messages that
cross servers, and exchange encrypted messages both ways that each side decrypts. Then
Bob logs in on a second device on b: Alice's client hears of it through her server's
device-list cache (the update crossed servers), and her next message decrypts on it; the
same for a second device of Alice on a."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
from nio import JoinResponse, RoomCreateResponse, RoomSendResponse
from nio.crypto import ENCRYPTION_ENABLED

from tests.federation.harness import FederatedServer, federation_servers
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import MEGOLM, Device, expect, login, register, until

pytestmark = pytest.mark.integration


def running(server: FederatedServer, engine: str) -> RunningServer:
    return RunningServer(server.client_url, server.server_name, engine, server.log)


async def test_encrypted_conversation_across_servers(engine: str, tmp_path: Path) -> None:
    assert ENCRYPTION_ENABLED, "matrix-nio was installed without its e2e extra"
    async with federation_servers(tmp_path, 2, engine=engine) as (a, b):
        opened: list[Any] = []
        try:
            await asyncio.wait_for(
                _conversation(running(a, engine), running(b, engine), opened, tmp_path),
                timeout=240,
            )
        except BaseException:
            print(f"--- a ---\n{a.log_tail()}\n--- b ---\n{b.log_tail()}")
            raise
        finally:
            for client in opened:
                await client.close()


async def _conversation(
    sa: RunningServer, sb: RunningServer, opened: list[Any], tmp_path: Path
) -> None:
    await register(sa, "alice", tmp_path / "alice-reg")
    await register(sb, "bob", tmp_path / "bob-reg")
    alice_client = await login(sa, "alice", tmp_path / "alice", "alice e2ee")
    opened.append(alice_client)
    bob_client = await login(sb, "bob", tmp_path / "bob", "bob e2ee")
    opened.append(bob_client)
    alice, bob = Device("alice", alice_client), Device("bob", bob_client)
    for device in (alice, bob):
        await device.tick(timeout_ms=0)
        assert device.uploads == 1, f"{device.name} did not upload keys"

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
    await until([bob], lambda: room_id in bob.client.invited_rooms, "saw the invite")
    assert expect(await bob.client.join(room_id), JoinResponse).room_id == room_id

    def both_joined_encrypted() -> bool:
        ra, rb = alice.client.rooms.get(room_id), bob.client.rooms.get(room_id)
        return (
            ra is not None
            and rb is not None
            and ra.encrypted
            and rb.encrypted
            and bob.user_id in ra.users
            and alice.user_id in rb.users
        )

    await until([alice, bob], both_joined_encrypted, "both saw the encrypted room with both in")
    await exchange(alice, bob, room_id)
    # A device added later, on either server, decrypts what comes after.
    await second_device(sb, bob, alice, room_id, opened, tmp_path)
    await second_device(sa, alice, bob, room_id, opened, tmp_path)


async def exchange(alice: Device, bob: Device, room_id: str) -> None:

    sent: list[tuple[str, Device, str]] = []
    for i in range(2):
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
        expected = [(e, body) for e, s, body in sent if s is other]
        got = [(e.event_id, e.body) for e in device.texts if e.sender == other.user_id]
        assert got == expected, f"{device.name} decrypted {got}, expected {expected}"
        assert all(e.decrypted for e in device.texts if e.sender == other.user_id)


async def second_device(
    server: RunningServer,
    owner: Device,
    sender: Device,
    room_id: str,
    opened: list[Any],
    tmp_path: Path,
) -> Device:
    """`owner` logs in on a second device (on their `server`): `sender`'s client learns
    of it through the device-list update that crossed servers, and `sender`'s next
    message decrypts on both of the owner's devices."""
    localpart = owner.user_id[1:].split(":", 1)[0]
    new_client = await login(server, localpart, tmp_path / f"{owner.name}-2", "second")
    opened.append(new_client)
    new = Device(f"{owner.name}-2", new_client)
    assert new.device_id != owner.device_id
    await new.tick(timeout_ms=0)
    assert new.uploads == 1, f"{new.name} did not upload keys after its first sync"

    sender.device_lists_changed.clear()
    await until(
        [sender, new],
        lambda: new.device_id in sender.client.device_store[owner.user_id],
        f"learned of {new.name} on the other server (device_lists.changed, then /keys/query)",
    )
    assert owner.user_id in sender.device_lists_changed, (
        f"{sender.name} was not told {owner.name}'s devices changed"
    )
    assert new_client.olm is not None
    assert (
        sender.client.device_store[owner.user_id][new.device_id].ed25519
        == new_client.olm.account.identity_keys["ed25519"]
    )

    later = f"{sender.name} secret for both of {owner.name}'s devices"
    later_id = expect(
        await sender.client.room_send(
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
        [sender, new, owner],
        lambda: later_on(new) and later_on(owner),
        f"decrypted {sender.name}'s {later!r} ({later_id}, sent after the second device "
        f"appeared) on both of {owner.name}'s devices",
    )
    decrypted = next(e for e in new.texts if e.event_id == later_id)
    assert decrypted.decrypted and decrypted.sender == sender.user_id
    return new
