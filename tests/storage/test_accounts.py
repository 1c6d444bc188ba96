"""AccountStore on both engines."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from starling.storage import Database
from starling.storage.accounts import (
    AccountStore,
    Device,
    RegistrationToken,
    RegistrationTokenExists,
    TokenOwner,
    User,
    UserExists,
)

ALICE = "@alice:example.org"
BOB = "@bob:example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: Database, clock: Clock) -> AccountStore:
    return AccountStore(database, clock_ms=clock)


# -- users


async def test_create_and_get_user(store: AccountStore, clock: Clock) -> None:
    assert await store.get_user(ALICE) is None
    assert not await store.user_exists(ALICE)
    await store.create_user(ALICE, "hash", admin=True)
    await store.create_user(BOB, None, is_guest=True, appservice_id="irc")
    assert await store.user_exists(ALICE)
    assert await store.get_user(ALICE) == User(
        ALICE, "hash", clock.now, admin=True, deactivated=False, is_guest=False, appservice_id=None
    )
    bob = await store.get_user(BOB)
    assert bob is not None
    assert (bob.password_hash, bob.admin, bob.is_guest, bob.appservice_id) == (
        None,
        False,
        True,
        "irc",
    )
    assert isinstance(bob.admin, bool) and isinstance(bob.is_guest, bool)


async def test_create_user_twice_raises(store: AccountStore) -> None:
    await store.create_user(ALICE, "first")
    with pytest.raises(UserExists):
        await store.create_user(ALICE, "second")
    user = await store.get_user(ALICE)
    assert user is not None and user.password_hash == "first"


async def test_concurrent_registration_of_one_id_has_one_winner(store: AccountStore) -> None:
    results = await asyncio.gather(
        *(store.create_user(ALICE, f"h{i}") for i in range(10)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, UserExists) for r in results if r is not None)


async def test_set_password_admin_and_deactivate(store: AccountStore) -> None:
    assert not await store.set_password_hash(ALICE, "x")
    assert not await store.set_admin(ALICE, True)
    assert not await store.deactivate(ALICE)
    await store.create_user(ALICE, "old")
    assert await store.set_password_hash(ALICE, "new")
    assert await store.set_admin(ALICE, True)
    user = await store.get_user(ALICE)
    assert user is not None and (user.password_hash, user.admin) == ("new", True)
    assert await store.set_admin(ALICE, False)
    assert await store.deactivate(ALICE)
    user = await store.get_user(ALICE)
    assert user is not None
    assert (user.password_hash, user.admin, user.deactivated) == (None, False, True)


# -- devices


async def test_devices(store: AccountStore) -> None:
    await store.create_user(ALICE, "h")
    assert await store.upsert_device(ALICE, "PHONE", "Alice's phone")
    assert await store.upsert_device(ALICE, "LAPTOP", last_seen_ts=5, last_seen_ip="10.0.0.1")
    # A known device keeps its name; last-seen fields update only when given.
    assert not await store.upsert_device(ALICE, "PHONE", "ignored", last_seen_ts=9)
    assert not await store.upsert_device(ALICE, "LAPTOP")
    assert await store.get_device(ALICE, "PHONE") == Device(
        ALICE, "PHONE", "Alice's phone", 9, None
    )
    assert await store.get_device(ALICE, "LAPTOP") == Device(ALICE, "LAPTOP", None, 5, "10.0.0.1")
    assert await store.get_device(ALICE, "NOPE") is None
    assert [d.device_id for d in await store.list_devices(ALICE)] == ["LAPTOP", "PHONE"]
    assert await store.list_devices(BOB) == []

    assert await store.update_device_display_name(ALICE, "LAPTOP", "Work")
    assert not await store.update_device_display_name(ALICE, "NOPE", "x")
    device = await store.get_device(ALICE, "LAPTOP")
    assert device is not None and device.display_name == "Work"

    await store.update_devices_last_seen(
        [
            (ALICE, "PHONE", 100, "192.0.2.1", "Element/1.0"),
            (ALICE, "LAPTOP", 200, None, None),
            (BOB, "X", 1, None, None),
        ]
    )
    await store.update_devices_last_seen([])
    phone, laptop = await store.get_device(ALICE, "PHONE"), await store.get_device(ALICE, "LAPTOP")
    assert phone is not None and (phone.last_seen_ts, phone.last_seen_ip) == (100, "192.0.2.1")
    assert phone.last_seen_user_agent == "Element/1.0"
    assert laptop is not None and (laptop.last_seen_ts, laptop.last_seen_ip) == (200, None)
    # An older sighting flushed later (another worker's) does not replace a newer one.
    await store.update_devices_last_seen([(ALICE, "PHONE", 50, "198.51.100.7", "Old/0.1")])
    phone = await store.get_device(ALICE, "PHONE")
    assert phone is not None and (phone.last_seen_ts, phone.last_seen_ip) == (100, "192.0.2.1")


async def test_delete_devices_deletes_their_tokens(store: AccountStore) -> None:
    await store.create_user(ALICE, "h")
    await store.create_user(BOB, "h")
    for device_id in ("A", "B", "C"):
        await store.upsert_device(ALICE, device_id)
        await store.add_access_token(f"token-{device_id}", ALICE, device_id)
    await store.upsert_device(BOB, "A")
    await store.add_access_token("bob-token", BOB, "A")

    assert await store.delete_devices(ALICE, ["A", "C", "missing"]) == 2
    assert await store.delete_devices(ALICE, []) == 0
    assert [d.device_id for d in await store.list_devices(ALICE)] == ["B"]
    assert await store.get_by_access_token("token-A") is None
    assert await store.get_by_access_token("token-C") is None
    assert await store.get_by_access_token("token-B") is not None
    # Another user's device with the same ID is untouched.
    assert await store.get_by_access_token("bob-token") is not None


# -- access tokens


async def test_access_tokens(store: AccountStore, database: Database) -> None:
    await store.create_user(ALICE, "h", admin=True)
    await store.upsert_device(ALICE, "PHONE")
    await store.add_access_token("secret", ALICE, "PHONE", valid_until_ms=123)
    await store.add_access_token("no-device", ALICE, None)

    owner = await store.get_by_access_token("secret")
    assert owner == TokenOwner(ALICE, "PHONE", 123, is_admin=True, deactivated=False)
    assert isinstance(owner.is_admin, bool)
    assert tuple(owner) == (ALICE, "PHONE", 123, True, False)
    assert await store.get_by_access_token("no-device") == TokenOwner(
        ALICE, None, None, True, False
    )
    assert await store.get_by_access_token("unknown") is None

    # Only the hash is stored.
    stored = [bytes(r[0]) for r in await database.fetch_all("SELECT token_hash FROM access_tokens")]
    assert hashlib.sha256(b"secret").digest() in stored
    assert (
        await database.fetch_val(
            "SELECT COUNT(*) FROM access_tokens WHERE token_hash = ?", b"secret"
        )
        == 0
    )

    await store.deactivate(ALICE)
    owner = await store.get_by_access_token("secret")
    assert owner is not None and owner.deactivated

    assert await store.delete_access_token("secret")
    assert not await store.delete_access_token("secret")
    assert await store.get_by_access_token("secret") is None


async def test_delete_all_tokens(store: AccountStore) -> None:
    await store.create_user(ALICE, "h")
    await store.create_user(BOB, "h")
    for device_id in ("A", "B"):
        await store.upsert_device(ALICE, device_id)
    await store.upsert_device(BOB, "A")
    await store.add_access_token("a1", ALICE, "A")
    await store.add_access_token("a2", ALICE, "A")
    await store.add_access_token("b1", ALICE, "B")
    await store.add_access_token("none", ALICE, None)
    await store.add_access_token("bob", BOB, "A")

    assert await store.delete_all_tokens(ALICE, except_device="A") == 2
    assert await store.get_by_access_token("a1") is not None
    assert await store.get_by_access_token("a2") is not None
    assert await store.get_by_access_token("b1") is None
    assert await store.get_by_access_token("none") is None
    assert await store.delete_all_tokens(ALICE) == 2
    assert await store.get_by_access_token("a1") is None
    assert await store.get_by_access_token("bob") is not None


# -- registration tokens


async def test_registration_token_crud(store: AccountStore, clock: Clock) -> None:
    await store.create_registration_token("unlimited")
    await store.create_registration_token("twice", uses_allowed=2, expiry_time=clock.now + 1000)
    with pytest.raises(RegistrationTokenExists):
        await store.create_registration_token("twice")
    assert await store.get_registration_token("twice") == RegistrationToken(
        "twice", 2, 0, 0, clock.now + 1000
    )
    assert await store.get_registration_token("missing") is None
    assert [t.token for t in await store.list_registration_tokens()] == ["twice", "unlimited"]

    updated = await store.update_registration_token("twice", uses_allowed=5)
    assert updated == RegistrationToken("twice", 5, 0, 0, clock.now + 1000)
    updated = await store.update_registration_token("twice", expiry_time=None)
    assert updated == RegistrationToken("twice", 5, 0, 0, None)
    assert await store.update_registration_token("twice") == updated
    assert await store.update_registration_token("missing", uses_allowed=1) is None

    assert await store.delete_registration_token("twice")
    assert not await store.delete_registration_token("twice")
    assert [t.token for t in await store.list_registration_tokens()] == ["unlimited"]


async def test_registration_token_validity(store: AccountStore, clock: Clock) -> None:
    await store.create_registration_token("ok", uses_allowed=1)
    await store.create_registration_token("expired", expiry_time=clock.now - 1)
    await store.create_registration_token("used_up", uses_allowed=0)
    valid = [t.token for t in await store.list_registration_tokens(valid=True)]
    invalid = [t.token for t in await store.list_registration_tokens(valid=False)]
    assert valid == ["ok"]
    assert invalid == ["expired", "used_up"]
    assert not await store.use_registration_token("expired")
    assert not await store.use_registration_token("used_up")
    assert not await store.use_registration_token("missing")


async def test_use_registration_token_is_atomic(store: AccountStore) -> None:
    await store.create_registration_token("three", uses_allowed=3)
    results = await asyncio.gather(*(store.use_registration_token("three") for _ in range(10)))
    assert sum(results) == 3
    token = await store.get_registration_token("three")
    assert token is not None and token.completed == 3


async def test_reserve_complete_release(store: AccountStore) -> None:
    await store.create_registration_token("two", uses_allowed=2)
    assert await store.reserve_registration_token("two")
    assert await store.reserve_registration_token("two")
    assert not await store.reserve_registration_token("two")  # both uses are held
    assert await store.release_registration_token("two")
    assert await store.complete_registration_token("two")
    assert await store.get_registration_token("two") == RegistrationToken("two", 2, 0, 1, None)
    assert not await store.complete_registration_token("two")  # nothing pending
    assert not await store.release_registration_token("two")
    assert await store.reserve_registration_token("two")
    assert not await store.use_registration_token("two")
