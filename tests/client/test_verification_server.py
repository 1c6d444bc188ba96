"""SAS verification through a real `starling serve` (both engines): a Starling client
verifies another Starling client driven through `starling-chat verify --wait --yes`, and a
matrix-nio client; both sides show the same emoji and end with the other device verified."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nio import AsyncClient

from starling_client.client import Client
from starling_client.store import Store
from starling_client.verification import SAS_EMOJI, Sas
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, Device, register
from tests.interop.test_nio_e2ee import login as nio_login

pytestmark = pytest.mark.integration

PASSPHRASE = "verification passphrase"
DEADLINE_S = 30.0


@pytest.fixture
async def opened() -> AsyncIterator[list[Client | AsyncClient]]:
    clients: list[Client | AsyncClient] = []
    yield clients
    for client in clients:
        await client.close()


async def sync_until(
    client: Client, done: Callable[[], bool], what: str, others: list[Device] = ()
) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if done():
            return
        await client.sync_once(timeout_ms=300)
        for device in others:
            await device.tick(timeout_ms=100)
    assert done(), f"within {DEADLINE_S}s: never {what}"


async def test_verify_a_starling_client_driven_by_the_cli(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, PASSPHRASE)
    opened.append(alice)
    env = {**os.environ, "STARLING_CHAT_PASSPHRASE": PASSPHRASE}
    cli = [sys.executable, "-m", "starling_client.cli", "--store", str(tmp_path / "bob")]
    login = await asyncio.create_subprocess_exec(
        *cli,
        "login",
        "--homeserver",
        server.url,
        "bob",
        "--password",
        PASSWORD,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(login.communicate(), 60)
    assert login.returncode == 0, err
    bob_device = out.decode().splitlines()[0].split("(device ")[1].rstrip(")")

    # Bob's CLI waits for a verification from Alice and accepts matching emoji.
    bob = await asyncio.create_subprocess_exec(
        *cli,
        "verify",
        "@alice:localhost",
        "--wait",
        "--yes",
        "--timeout",
        "60",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        sas = await alice.start_verification("@bob:localhost", bob_device)
        await sync_until(alice, lambda: sas.state in ("keys", "cancelled"), "exchanged keys")
        assert sas.state == "keys", (sas.cancel_code, sas.cancel_reason)
        await alice.confirm_verification(sas)
        await sync_until(alice, lambda: sas.verified or sas.state == "cancelled", "verified Bob")
        out, err = await asyncio.wait_for(bob.communicate(), 60)
    finally:
        if bob.returncode is None:
            bob.kill()
            await bob.wait()
    assert bob.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    shown = "  ".join(f"{e} {name}" for e, name in sas.emoji())
    assert f"emoji: {shown}" in lines
    assert "decimals: " + " ".join(map(str, sas.decimals())) in lines
    assert lines[-1] == f"verified @alice:localhost {alice.device_id}"
    assert sas.verified
    assert alice.crypto.devices["@bob:localhost"][bob_device].verified
    # Cross-signing: both bootstrapped at login; the MACs carried the master keys, so each
    # now verifies the other user (and Bob's CLI says so).
    assert "identity of @alice:localhost: verified" in lines
    assert sas.master_verified and alice.user_trust("@bob:localhost") == "verified"
    # Bob's store remembers that Alice's device is verified.
    store = Store(tmp_path / "bob" / "client.db", PASSPHRASE)
    try:
        machine = store.load_machine("@bob:localhost", bob_device)
        assert machine.devices["@alice:localhost"][alice.device_id].verified
    finally:
        store.close()


async def test_verify_a_matrix_nio_device(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "nina", tmp_path / "nina-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, PASSPHRASE)
    opened.append(alice)
    nio_client = await nio_login(server, "nina", tmp_path / "nina", "nina nio")
    opened.append(nio_client)
    nina = Device("nina", nio_client)
    await nina.tick(timeout_ms=0)
    # nio must know Alice's device to take part.
    assert nio_client.olm is not None
    nio_client.olm.users_for_key_query.add(alice.user_id)
    await nio_client.keys_query()

    sas: Sas = await alice.start_verification(nina.user_id, nina.device_id)
    deadline = time.monotonic() + DEADLINE_S
    while sas.transaction_id not in nio_client.key_verifications and time.monotonic() < deadline:
        await nina.tick(timeout_ms=300)
    theirs = nio_client.key_verifications[sas.transaction_id]
    await nio_client.accept_key_verification(sas.transaction_id)
    await sync_until(alice, lambda: sas.state in ("keys", "cancelled"), "exchanged keys", [nina])
    assert sas.state == "keys", (sas.cancel_code, sas.cancel_reason)
    while theirs.established_sas is None and time.monotonic() < deadline:
        await nina.tick(timeout_ms=300)
    # The same SAS bytes on both sides: the decimals agree.
    assert tuple(theirs.get_decimals()) == sas.decimals()
    # matrix-nio 0.26 takes vodozemac's emoji *indices* for the raw SAS bytes and splits
    # them into 6-bit groups again, so it shows other emoji than the spec's (and Element's)
    # for the same bytes. Its emoji are exactly that regrouping of our indices.
    indices = [SAS_EMOJI.index(e) for e in sas.emoji()]
    bits = "".join(format(i, "08b") for i in indices)[:42]
    regrouped = [SAS_EMOJI[int(bits[i : i + 6], 2)][0] for i in range(0, 42, 6)]
    assert [e for e, _ in theirs.get_emoji()] == regrouped
    await alice.confirm_verification(sas)
    await nio_client.confirm_short_auth_string(sas.transaction_id)
    await sync_until(
        alice, lambda: sas.verified or sas.state == "cancelled", "verified Nina", [nina]
    )
    assert sas.verified, (sas.cancel_code, sas.cancel_reason)
    assert alice.crypto.devices[nina.user_id][nina.device_id].verified
    while not theirs.verified and time.monotonic() < deadline:
        await nina.tick(timeout_ms=300)
    assert theirs.verified and not theirs.canceled
    device = nio_client.device_store[alice.user_id][alice.device_id]
    assert device.verified


async def test_a_new_verified_device_gets_history_keys_from_the_old_one(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    one = await Client.login(tmp_path / "one", server.url, "alice", PASSWORD, PASSPHRASE)
    opened.append(one)
    room_id = await one.create_room(name="notes to self")
    bodies = [f"note {i}" for i in range(3)]
    for body in bodies:
        await one.send_text(room_id, body)
    two = await Client.login(tmp_path / "two", server.url, "alice", PASSWORD, PASSPHRASE)
    opened.append(two)
    assert not [m for m in two.timeline(room_id) if m.body in bodies]

    # The two devices verify each other.
    sas = await one.start_verification(one.user_id, two.device_id)
    deadline = time.monotonic() + DEADLINE_S
    theirs: Sas | None = None
    while theirs is None and time.monotonic() < deadline:
        await two.sync_once(timeout_ms=300)
        if sas.transaction_id in two.incoming_verifications():
            theirs = await two.accept_verification(sas.transaction_id)
    assert theirs is not None, "the new device never saw the verification"
    while not (sas.state == theirs.state == "keys") and time.monotonic() < deadline:
        await one.sync_once(timeout_ms=200)
        await two.sync_once(timeout_ms=200)
    assert sas.emoji() == theirs.emoji()
    await one.confirm_verification(sas)
    await two.confirm_verification(theirs)
    while not (sas.verified and theirs.verified) and time.monotonic() < deadline:
        await one.sync_once(timeout_ms=200)
        await two.sync_once(timeout_ms=200)
    assert sas.verified and theirs.verified

    # The new device asks for the keys it lacks; the old one forwards them over Olm.
    def readable() -> list[str]:
        return [m.body for m in two.timeline(room_id) if m.body in bodies]

    while len(readable()) < 3 and time.monotonic() < deadline:
        await two.sync_once(timeout_ms=200)
        await one.sync_once(timeout_ms=200)
    assert sorted(readable()) == bodies
    restored = [m for m in two.timeline(room_id) if m.body in bodies]
    assert all(m.encrypted and not m.verified for m in restored)


async def test_the_cli_requests_a_verification(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client | AsyncClient]
) -> None:
    """`starling-chat verify USER DEVICE --yes` sends a request (Element's flow); the other
    Starling device answers ready, the CLI starts SAS, and both end verified."""
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")
    alice = await Client.login(tmp_path / "alice", server.url, "alice", PASSWORD, PASSPHRASE)
    opened.append(alice)
    env = {**os.environ, "STARLING_CHAT_PASSPHRASE": PASSPHRASE}
    cli = [sys.executable, "-m", "starling_client.cli", "--store", str(tmp_path / "bob")]
    login = await asyncio.create_subprocess_exec(
        *cli, "login", "--homeserver", server.url, "bob", "--password", PASSWORD, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(login.communicate(), 60)
    assert login.returncode == 0, err
    bob = await asyncio.create_subprocess_exec(
        *cli, "verify", alice.user_id, alice.device_id, "--yes", "--timeout", "60", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        sas: Sas | None = None
        while sas is None and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
            for txn in alice.incoming_verifications("@bob:localhost"):
                await alice.accept_verification(txn)  # a request: we answer ready
            sas = next(iter(alice.verifications.values()), None)
        assert sas is not None, "the CLI's request and start never arrived"
        assert not sas.we_started
        while sas.state != "keys" and sas.state != "cancelled" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        assert sas.state == "keys", (sas.cancel_code, sas.cancel_reason)
        await alice.confirm_verification(sas)
        while not sas.verified and sas.state != "cancelled" and time.monotonic() < deadline:
            await alice.sync_once(timeout_ms=300)
        out, err = await asyncio.wait_for(bob.communicate(), 60)
    finally:
        if bob.returncode is None:
            bob.kill()
            await bob.wait()
    assert sas.verified, (sas.cancel_code, sas.cancel_reason)
    assert bob.returncode == 0, err.decode()
    assert out.decode().splitlines()[-1] == f"verified {alice.user_id} {alice.device_id}"
