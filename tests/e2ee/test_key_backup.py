"""Server-side key backups: versions, keys, the replacement rules, etag and count."""

from __future__ import annotations

from typing import Any

from starling.e2ee.key_backup import keeps_new
from starling.storage.key_backup import RoomKey
from tests.e2ee.support import V3, Device, new_device
from tests.support.harness import Harness

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:test.local"


def key(
    first: int = 0, forwarded: int = 0, verified: bool = False, tag: str = "a"
) -> dict[str, Any]:
    return {
        "first_message_index": first,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ciphertext": tag, "ephemeral": "e", "mac": "m"},
    }


async def create(hs: Harness, d: Device) -> str:
    status, resp = await hs.request(
        "POST",
        f"{V3}/room_keys/version",
        d.token,
        {"algorithm": ALGORITHM, "auth_data": {"public_key": "abc"}},
    )
    assert status == 200, resp
    version: str = resp["version"]
    return version


async def put(hs: Harness, d: Device, version: str, path: str, body: Any) -> tuple[int, Any]:
    return await hs.request(
        "PUT", f"{V3}/room_keys/keys{path}", d.token, body, params={"version": version}
    )


async def test_versions(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    v1 = await create(hs, alice)
    v2 = await create(hs, alice)
    assert int(v2) > int(v1)
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert resp == {
        "algorithm": ALGORITHM,
        "auth_data": {"public_key": "abc"},
        "count": 0,
        "etag": "0",
        "version": v2,
    }
    status, resp = await hs.request("GET", f"{V3}/room_keys/version/{v1}", alice.token)
    assert resp["version"] == v1
    for bad in ("999", "abc", "-1"):
        status, resp = await hs.request("GET", f"{V3}/room_keys/version/{bad}", alice.token)
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    update = {"algorithm": ALGORITHM, "auth_data": {"public_key": "new"}}
    status, _ = await hs.request("PUT", f"{V3}/room_keys/version/{v2}", alice.token, update)
    assert status == 200
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert resp["auth_data"] == {"public_key": "new"}
    # auth_data is the algorithm's and opaque: a string is kept as given (as Synapse).
    opaque = {"algorithm": ALGORITHM, "auth_data": "anopaquestring"}
    status, _ = await hs.request("PUT", f"{V3}/room_keys/version/{v2}", alice.token, opaque)
    assert status == 200
    status, resp = await hs.request("GET", f"{V3}/room_keys/version/{v2}", alice.token)
    assert resp["auth_data"] == "anopaquestring"
    bad = {"algorithm": ALGORITHM, "auth_data": 5}
    status, resp = await hs.request("PUT", f"{V3}/room_keys/version/{v2}", alice.token, bad)
    assert (status, resp["errcode"]) == (400, "M_BAD_JSON")
    for body in (
        {"algorithm": "other", "auth_data": {}},
        {"algorithm": ALGORITHM, "auth_data": {}, "version": v1},
    ):
        status, resp = await hs.request("PUT", f"{V3}/room_keys/version/{v2}", alice.token, body)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    status, resp = await hs.request(
        "POST", f"{V3}/room_keys/version", alice.token, {"auth_data": {}}
    )
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")
    # Deleting the current version makes the previous one current; numbers are not reused.
    status, _ = await hs.request("DELETE", f"{V3}/room_keys/version/{v2}", alice.token)
    assert status == 200
    status, resp = await hs.request("DELETE", f"{V3}/room_keys/version/{v2}", alice.token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert resp["version"] == v1
    assert int(await create(hs, alice)) > int(v2)
    # Another user's backups are not visible.
    bob = await new_device(hs, "bob")
    status, _ = await hs.request("GET", f"{V3}/room_keys/version/{v1}", bob.token)
    assert status == 404


def test_replacement_rules() -> None:
    def k(first: int, forwarded: int, verified: bool) -> RoomKey:
        return RoomKey(ROOM, "s", first, forwarded, verified, "{}")

    assert keeps_new(None, k(5, 5, False))
    assert keeps_new(k(0, 0, False), k(9, 9, True))  # verified wins over everything
    assert not keeps_new(k(9, 9, True), k(0, 0, False))
    assert keeps_new(k(5, 0, True), k(4, 9, True))  # then the lower first index
    assert not keeps_new(k(4, 9, False), k(5, 0, False))
    assert keeps_new(k(4, 3, False), k(4, 2, False))  # then the lower forwarded count
    assert not keeps_new(k(4, 2, False), k(4, 2, False))  # a tie keeps the stored key


async def test_keys_roundtrip_rules_etag_and_count(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    version = await create(hs, alice)
    body = {"rooms": {ROOM: {"sessions": {"s1": key(5), "s2": key(0)}}}}
    status, resp = await put(hs, alice, version, "", body)
    assert (status, resp) == (200, {"etag": "1", "count": 2})
    # A worse key changes nothing (etag stays); a better one replaces.
    status, resp = await put(hs, alice, version, f"/{ROOM}/s1", key(6, tag="worse"))
    assert resp == {"etag": "1", "count": 2}
    status, resp = await put(
        hs, alice, version, f"/{ROOM}", {"sessions": {"s1": key(3, tag="better")}}
    )
    assert resp == {"etag": "2", "count": 2}
    status, resp = await put(
        hs, alice, version, f"/{ROOM}/s1", key(9, verified=True, tag="verified")
    )
    assert resp == {"etag": "3", "count": 2}
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys/{ROOM}/s1", alice.token, params={"version": version}
    )
    assert resp == key(9, verified=True, tag="verified")
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys", alice.token, params={"version": version}
    )
    assert set(resp["rooms"][ROOM]["sessions"]) == {"s1", "s2"}
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys/!other:test.local", alice.token, params={"version": version}
    )
    assert resp == {"sessions": {}}
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys/{ROOM}/nope", alice.token, params={"version": version}
    )
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert (resp["count"], resp["etag"]) == (2, "3")
    status, resp = await hs.request(
        "DELETE", f"{V3}/room_keys/keys/{ROOM}/s2", alice.token, params={"version": version}
    )
    assert resp == {"etag": "4", "count": 1}
    status, resp = await hs.request(
        "DELETE", f"{V3}/room_keys/keys", alice.token, params={"version": version}
    )
    assert resp == {"etag": "5", "count": 0}


async def test_key_errors(hs: Harness) -> None:
    alice = await new_device(hs, "alice")
    status, resp = await put(hs, alice, "1", f"/{ROOM}/s", key())
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    old = await create(hs, alice)
    current = await create(hs, alice)
    status, resp = await put(hs, alice, old, f"/{ROOM}/s", key())
    assert (status, resp["errcode"], resp["current_version"]) == (
        403,
        "M_WRONG_ROOM_KEYS_VERSION",
        current,
    )
    status, resp = await put(hs, alice, "77", f"/{ROOM}/s", key())
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    bad = [
        ({**key(), "first_message_index": -1}, "M_BAD_JSON"),
        ({**key(), "is_verified": "yes"}, "M_BAD_JSON"),
        ({**key(), "session_data": 5}, "M_BAD_JSON"),
        ({k: v for k, v in key().items() if k != "forwarded_count"}, "M_BAD_JSON"),
    ]
    for body, errcode in bad:
        status, resp = await put(hs, alice, current, f"/{ROOM}/s", body)
        assert (status, resp["errcode"]) == (400, errcode), body
    status, resp = await put(hs, alice, current, "/notaroom/s", key())
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    # One bad session in a bulk upload stores nothing.
    status, resp = await put(
        hs, alice, current, "", {"rooms": {ROOM: {"sessions": {"ok": key(), "bad": {}}}}}
    )
    assert status == 400
    status, resp = await hs.request("GET", f"{V3}/room_keys/version", alice.token)
    assert resp["count"] == 0
    status, resp = await hs.request("GET", f"{V3}/room_keys/keys", alice.token)
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")


async def test_room_ids_and_session_data_are_opaque(hs: Harness) -> None:
    """The room a backed-up key is for is the client's opaque ID (SyTest uses "!abcd"),
    and session_data may be a string: both are stored and given back as sent."""
    alice = await new_device(hs, "alice")
    version = await create(hs, alice)
    body = {**key(), "session_data": "anopaquestring"}
    status, resp = await put(hs, alice, version, "/!abcd/1234", body)
    assert status == 200, resp
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys/!abcd/1234", alice.token, params={"version": version}
    )
    assert (status, resp) == (200, body)
    status, resp = await hs.request(
        "GET", f"{V3}/room_keys/keys/!notaroom/nosession", alice.token, params={"version": version}
    )
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await put(hs, alice, version, "/notaroom/1234", key())
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
