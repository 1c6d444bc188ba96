"""Cross-signing between Starling clients through a real `starling serve` (both engines):
the first device bootstraps the identity at login (user-interactive auth with the
password), a second device of the same user takes the keys from secret storage and signs
itself, a SAS between two users makes each sign the other's master key (seen by their
other devices too), and a replaced identity shows as changed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from starling_client.client import Client
from tests.interop.conftest import RunningServer
from tests.interop.test_nio_e2ee import PASSWORD, register

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


@pytest.fixture
async def opened() -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for client in clients:
        await client.close()


async def sync_until(clients: list[Client], done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if done():
            return
        for client in clients:
            await client.sync_once(timeout_ms=200)
    assert done(), f"within {DEADLINE_S}s: never {what}"


async def test_cross_signing_bootstrap_secret_storage_sas_and_changed_identity(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client]
) -> None:
    server = starling_server
    await register(server, "alice", tmp_path / "alice-reg")
    await register(server, "bob", tmp_path / "bob-reg")

    async def login(user: str, store: str) -> Client:
        client = await Client.login(tmp_path / store, server.url, user, PASSWORD, "pw")
        opened.append(client)
        return client

    alice = await login("alice", "alice1")
    bob = await login("bob", "bob1")
    # Bootstrapped at login: our identity is trusted and this device is signed by it.
    for c in (alice, bob):
        assert c.user_trust(c.user_id) == "verified"
        own = {d["device_id"]: d for d in await c.devices(c.user_id)}
        assert own[c.device_id]["cross_signed"] and own[c.device_id]["trusted"]
    assert await alice.bootstrap_cross_signing(PASSWORD) is False  # not twice

    # A second device of Alice's: the identity exists, it is not trusted here yet, and this
    # device is not signed; Alice's first device does not trust it either.
    alice2 = await login("alice", "alice2")
    assert alice2.user_trust(alice.user_id) == "unverified"
    mine = {d["device_id"]: d for d in await alice2.devices(alice.user_id)}
    assert mine[alice.device_id]["cross_signed"] and not mine[alice.device_id]["trusted"]
    assert not mine[alice2.device_id]["cross_signed"]
    # Secret storage holds the cross-signing keys: a restore trusts the identity and signs
    # this device with the self-signing key, so Alice's first device trusts it unverified.
    recovery_key = await alice.create_backup()
    await alice2.restore_backup(recovery_key)
    assert alice2.user_trust(alice.user_id) == "verified"
    seen = {d["device_id"]: d for d in await alice.devices(alice.user_id)}
    assert seen[alice2.device_id]["cross_signed"] and seen[alice2.device_id]["trusted"]
    assert not seen[alice2.device_id]["verified"]  # trusted through cross-signing only
    for name in ("master", "self_signing", "user_signing"):
        stored = await alice.api.get_account_data(alice.user_id, f"m.cross_signing.{name}")
        assert stored and "encrypted" in stored
    backup = await alice.api.backup_version()
    master = alice.crypto.own_master
    assert backup and f"ed25519:{master}" in backup["auth_data"]["signatures"][alice.user_id]

    # They share a room, so each hears of the other's key changes through /sync.
    room_id = await alice.create_room(invite=[bob.user_id])
    await bob.join(room_id)

    # Before a SAS Bob is unverified to Alice; the SAS carries each master key in the MAC
    # and each side signs the other's master key with its user-signing key.
    assert alice.user_trust(bob.user_id) == "unverified"
    bob_devices = await alice.devices(bob.user_id)
    assert bob_devices[0]["cross_signed"] and not bob_devices[0]["trusted"]
    sas = await alice.start_verification(bob.user_id, bob.device_id)
    await sync_until([bob], lambda: bool(bob.incoming_verifications()), "Bob saw the start")
    await bob.accept_verification(bob.incoming_verifications()[0])
    theirs = bob.verifications[sas.transaction_id]
    await sync_until([alice, bob], lambda: sas.state == "keys" and theirs.state == "keys", "keys")
    await alice.confirm_verification(sas)
    await bob.confirm_verification(theirs)
    await sync_until([alice, bob], lambda: sas.verified and theirs.verified, "both verified")
    assert sas.master_verified and theirs.master_verified
    assert alice.user_trust(bob.user_id) == "verified"
    assert bob.user_trust(alice.user_id) == "verified"
    # Alice's other device learns from the server that Alice verified Bob (her user-signing
    # key's signature on Bob's master key), and so trusts Bob's devices.
    bob_seen = await alice2.devices(bob.user_id)
    assert alice2.user_trust(bob.user_id) == "verified"
    assert bob_seen[0]["trusted"] and not bob_seen[0]["verified"]

    # Bob replaces his identity (a reset): Alice sees a changed identity, and his devices,
    # signed by the new keys, are no longer trusted through cross-signing.
    bob2 = await login("bob", "bob2")
    assert await bob2.bootstrap_cross_signing(PASSWORD, reset=True)
    assert bob2.user_trust(bob.user_id) == "verified"
    await sync_until(
        [alice], lambda: alice.user_trust(bob.user_id) == "changed", "saw Bob's new identity"
    )
    fresh = {d["device_id"]: d for d in await alice.devices(bob.user_id)}
    assert fresh[bob2.device_id]["cross_signed"] and not fresh[bob2.device_id]["trusted"]
    assert fresh[bob.device_id]["verified"]  # the SAS-verified device stays verified itself


async def test_a_refused_bootstrap_does_not_undo_the_login(
    starling_server: RunningServer,
    tmp_path: Path,
    opened: list[Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that will not take the keys (another auth flow, say) leaves a working
    device without an identity, and says why."""
    from starling_client.api import Api, MatrixError

    async def refuse(*_: object, **__: object) -> None:
        raise MatrixError(401, "M_FORBIDDEN", "SSO only")

    monkeypatch.setattr(Api, "upload_signing_keys", refuse)
    await register(starling_server, "carol", tmp_path / "carol-reg")
    carol = await Client.login(tmp_path / "carol", starling_server.url, "carol", PASSWORD, "pw")
    opened.append(carol)
    assert carol.cross_signing_error is not None and "SSO only" in carol.cross_signing_error
    assert carol.user_trust(carol.user_id) == "unverified"
    assert carol.store.get_secret("cross_signing:master") is None  # no stray keys kept
    room_id = await carol.create_room(name="still works")
    assert await carol.send_text(room_id, "hello")


async def test_a_new_device_verified_by_sas_gets_the_secrets_from_the_other(
    starling_server: RunningServer, tmp_path: Path, opened: list[Client]
) -> None:
    """Instead of restoring from secret storage, a new device verified by SAS with one of
    the user's devices asks it for the secrets (m.secret.request); it answers over Olm
    (m.secret.send) to a device it trusts, and the new device checks each against the
    account's published keys: it then trusts the identity, is cross-signed and backs up."""
    await register(starling_server, "alice", tmp_path / "alice-reg")
    one = await Client.login(tmp_path / "one", starling_server.url, "alice", PASSWORD, "pw")
    opened.append(one)
    await one.create_backup()
    two = await Client.login(tmp_path / "two", starling_server.url, "alice", PASSWORD, "pw")
    opened.append(two)
    assert two.user_trust(two.user_id) == "unverified"
    assert not (await two.backup_status())["this_device_has_key"]

    sas = await two.start_verification(two.user_id, one.device_id)
    await sync_until([one], lambda: bool(one.incoming_verifications()), "one saw the start")
    await one.accept_verification(one.incoming_verifications()[0])
    theirs = one.verifications[sas.transaction_id]
    await sync_until([one, two], lambda: sas.state == "keys" == theirs.state, "keys")
    await two.confirm_verification(sas)
    await one.confirm_verification(theirs)
    await sync_until(
        [one, two],
        lambda: (
            two.user_trust(two.user_id) == "verified"
            and two.store.get_secret("backup_key") is not None
        ),
        "two got the secrets",
    )
    assert two.store.get_secret("cross_signing:self_signing") is not None
    assert (await two.backup_status())["this_device_has_key"]
    mine = {d["device_id"]: d for d in await one.devices(one.user_id)}
    assert mine[two.device_id]["verified"] and mine[two.device_id]["cross_signed"]
