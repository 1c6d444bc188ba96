"""End-to-end encryption between Starling (SQLite and PostgreSQL) and a real Synapse
(tests/federation/synapse.py), with matrix-nio clients (olm/megolm through vodozemac) on
each: Alice on Starling and Bob on Synapse query and claim each other's keys over
federation, exchange megolm messages both ways, and each sees the other's device-list
changes - a second device of Bob on Synapse, then of Alice on Starling, decrypts the
other side's next message - and Starling answers for Bob from its device-list cache (with
Synapse frozen)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import JoinResponse, RoomCreateResponse
from nio.crypto import ENCRYPTION_ENABLED

from tests.federation.harness import (
    FederatedServer,
    eventually,
    federation_servers,
    make_test_pki,
)
from tests.federation.synapse import SynapseServer, start_synapse
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import MEGOLM, Device, expect, login, register, until
from tests.interop.test_nio_e2ee_federation import exchange, second_device

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synapse_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    directory = tmp_path_factory.mktemp("synapse-e2ee")
    server = start_synapse(directory, make_test_pki(directory / "pki"))
    try:
        yield server
    finally:
        server.stop()


def running(server: FederatedServer, engine: str) -> RunningServer:
    return RunningServer(server.client_url, server.server_name, engine, server.log)


async def test_encrypted_conversation_with_synapse(
    engine: str, tmp_path: Path, synapse_process: SynapseServer
) -> None:
    assert ENCRYPTION_ENABLED, "matrix-nio was installed without its e2e extra"
    assert synapse_process.proc is not None
    async with federation_servers(tmp_path, 1, engine=engine) as (starling,):
        opened: list[Any] = []
        try:
            await asyncio.wait_for(
                _conversation(
                    running(starling, engine),
                    running(synapse_process, "sqlite"),
                    synapse_process.proc.pid,
                    opened,
                    tmp_path,
                ),
                timeout=300,
            )
        except BaseException:
            print(f"--- starling ---\n{starling.log_tail()}")
            print(f"--- synapse ---\n{synapse_process.log_tail()}")
            raise
        finally:
            for client in opened:
                await client.close()
            await synapse_process.close()
    assert synapse_process.proc is not None and synapse_process.proc.poll() is None


async def _conversation(
    starling: RunningServer,
    synapse: RunningServer,
    synapse_pid: int,
    opened: list[Any],
    tmp_path: Path,
) -> None:
    # Fresh users per engine run (the module's Synapse serves both).
    suffix = secrets.token_hex(3)
    alice_name, bob_name = f"alice{suffix}", f"bob{suffix}"
    await register(starling, alice_name, tmp_path / "alice-reg")
    await register(synapse, bob_name, tmp_path / "bob-reg")
    alice_client = await login(starling, alice_name, tmp_path / "alice", "alice e2ee")
    opened.append(alice_client)
    bob_client = await login(synapse, bob_name, tmp_path / "bob", "bob e2ee")
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
    # Device-list changes cross both ways: a new device on Synapse (Starling's cache
    # follows Synapse's m.device_list_update chain), then one on Starling.
    bob2 = await second_device(synapse, bob, alice, room_id, opened, tmp_path)
    await second_device(starling, alice, bob, room_id, opened, tmp_path)

    # Starling answers for Bob from its cache: with Synapse frozen, a /keys/query for him
    # still has both devices and no failure.
    async def answered_while_frozen() -> bool:
        with frozen(synapse_pid):
            body = await keys_query(starling, alice, bob.user_id)
        devices = body["device_keys"].get(bob.user_id, {})
        return not body["failures"] and set(devices) == {bob.device_id, bob2.device_id}

    await eventually(answered_while_frozen, timeout=60, what="Bob's devices cached by Starling")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: it answers nothing meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def keys_query(server: RunningServer, device: Device, user_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{server.url}/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}, "timeout": 1000},
            headers={"Authorization": f"Bearer {device.client.access_token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body
