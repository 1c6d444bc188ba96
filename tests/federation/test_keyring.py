"""The keyring on both engines: keys fetched from the server then from notaries, checked,
cached in memory and in the database with their validity; signatures of JSON and events
checked with the key valid at the right time; this server's key answers and notary."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from starling.federation.errors import FederationUnreachable, SignatureVerifyError
from starling.federation.keyring import (
    MAX_KEY_VALIDITY_MS,
    KeyResponseError,
    Keyring,
    KeyServer,
    Notary,
    parse_key_response,
)
from starling.protocol.event import Event
from starling.protocol.event_signing import hash_and_sign_event
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from starling.protocol.signing import SigningKey, build_server_keys, sign_json, verify_signed_json
from starling.storage import Database
from starling.storage.server_keys import ServerKeyStore

NOW = 1_700_000_000_000
DAY = 86_400_000
US = "us.test"
REMOTE = "remote.test"
NOTARY = "notary.test"


class FakeClient:
    """Answers get_json/post_json from a table; records the calls."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, Any]] = []

    async def get_json(self, destination: str, path: str, query: Any = None, **kw: Any) -> Any:
        return self._answer(destination, path, None)

    async def post_json(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return self._answer(destination, path, body)

    def _answer(self, destination: str, path: str, body: Any) -> Any:
        self.calls.append((destination, path, body))
        answer = self.answers.get((destination, path))
        if answer is None:
            raise FederationUnreachable(destination, "down")
        return answer(body) if callable(answer) else answer


class Clock:
    def __init__(self) -> None:
        self.ms = NOW
        self.mono = 100.0


def make_keyring(
    db: Database, client: FakeClient, clock: Clock, notaries: list[Notary] | None = None
) -> Keyring:
    return Keyring(
        US,
        SigningKey.generate("us1"),
        ServerKeyStore(db),
        client,  # type: ignore[arg-type]
        notaries=notaries or [],
        clock_ms=lambda: clock.ms,
        monotonic=lambda: clock.mono,
    )


def remote_keys(
    key: SigningKey, valid_until: int, old: dict[str, tuple[Any, int]] | None = None
) -> dict[str, Any]:
    return build_server_keys(REMOTE, [key], valid_until, old)


async def test_fetch_directly_cache_and_persist(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    key = SigningKey.generate("r1")
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(key, NOW + DAY)
    keyring = make_keyring(database, client, clock)
    obj = sign_json({"hello": "world"}, REMOTE, key)
    await keyring.verify_json_for_server(REMOTE, obj, at_ts=NOW)
    await keyring.verify_json_for_server(REMOTE, obj, at_ts=NOW + DAY)
    assert len(client.calls) == 1
    # A new keyring (a restart) finds the key in the database.
    again = make_keyring(database, FakeClient(), clock)
    assert await again.get_verify_key(REMOTE, key.key_id, NOW) == key.verify_key
    # Tampered or unsigned objects fail.
    with pytest.raises(SignatureVerifyError):
        await keyring.verify_json_for_server(REMOTE, {**obj, "hello": "there"}, at_ts=NOW)
    with pytest.raises(SignatureVerifyError, match="not signed"):
        await keyring.verify_json_for_server(REMOTE, {"hello": "world"}, at_ts=NOW)


async def test_validity_is_capped_and_expired_keys_refetched(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    key = SigningKey.generate("r1")
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(key, NOW + 365 * DAY)
    keyring = make_keyring(database, client, clock)
    await keyring.get_verify_key(REMOTE, key.key_id, NOW)
    (stored,) = await ServerKeyStore(database).get_keys(REMOTE)
    assert stored.valid_until_ts == NOW + MAX_KEY_VALIDITY_MS  # the spec's 7 days
    # A time past the validity: refetched (the answer now lasts long enough).
    clock.mono += 100
    clock.ms = NOW + 8 * DAY
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(key, NOW + 9 * DAY)
    assert await keyring.get_verify_key(REMOTE, key.key_id, NOW + 8 * DAY) == key.verify_key
    assert len(client.calls) == 2


async def test_old_keys_verify_events_before_they_expired(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    old, new = SigningKey.generate("old"), SigningKey.generate("new")
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(
        new, NOW + DAY, {old.key_id: (old.verify_key, NOW - DAY)}
    )
    keyring = make_keyring(database, client, clock)
    assert await keyring.get_verify_key(REMOTE, old.key_id, NOW - 2 * DAY) == old.verify_key
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key(REMOTE, old.key_id, NOW)  # e.g. a request now


async def test_bad_key_responses_are_refused(database: Database) -> None:
    key, other = SigningKey.generate("r1"), SigningKey.generate("r1")
    good = remote_keys(key, NOW + DAY)
    bad = [
        {**good, "server_name": "evil.test"},
        {**good, "valid_until_ts": "soon"},
        {k: v for k, v in good.items() if k != "signatures"},
        # Signed with a key other than the one it lists.
        build_server_keys(REMOTE, [other], NOW + DAY)
        | {"verify_keys": {key.key_id: {"key": key.public_key_base64}}},
        {**good, "verify_keys": {key.key_id: {"key": "!!"}}},
    ]
    for response in bad:
        with pytest.raises(KeyResponseError):
            parse_key_response(response, REMOTE, NOW)
    client, clock = FakeClient(), Clock()
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = bad[0]
    keyring = make_keyring(database, client, clock)
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key(REMOTE, key.key_id, NOW)
    # Asked again at once: no second fetch (a flood of bogus key IDs costs one).
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key(REMOTE, "ed25519:other", NOW)
    assert len(client.calls) == 1


async def test_notary_fallback(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    key, notary_key = SigningKey.generate("r1"), SigningKey.generate("n1")
    response = remote_keys(key, NOW + DAY)

    def notary_answer(body: Any) -> Any:
        assert body == {"server_keys": {REMOTE: {key.key_id: {"minimum_valid_until_ts": NOW}}}}
        return {"server_keys": [sign_json(response, NOTARY, notary_key)]}

    client.answers[(NOTARY, "/_matrix/key/v2/query")] = notary_answer
    pinned = Notary(NOTARY, {notary_key.key_id: notary_key.verify_key})
    keyring = make_keyring(database, client, clock, [pinned])
    assert await keyring.get_verify_key(REMOTE, key.key_id, NOW) == key.verify_key
    assert [c[0] for c in client.calls] == [REMOTE, NOTARY]

    # A notary answer not signed by the pinned notary key is not believed.
    third_key = SigningKey.generate("t1")
    third = build_server_keys("third.test", [third_key], NOW + DAY)
    client.answers[(NOTARY, "/_matrix/key/v2/query")] = {"server_keys": [third]}
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key("third.test", third_key.key_id, NOW)
    forged = sign_json(third, NOTARY, SigningKey.generate(notary_key.version))
    client.answers[(NOTARY, "/_matrix/key/v2/query")] = {"server_keys": [forged]}
    clock.mono += 100
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key("third.test", third_key.key_id, NOW)
    client.answers[(NOTARY, "/_matrix/key/v2/query")] = {
        "server_keys": [sign_json(third, NOTARY, notary_key)]
    }
    clock.mono += 100
    assert await keyring.get_verify_key("third.test", third_key.key_id, NOW)


async def test_event_signatures(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    key = SigningKey.generate("r1")
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(key, NOW + DAY)
    keyring = make_keyring(database, client, clock)
    for version_id in ("1", "4", "10", "12"):
        version = KNOWN_ROOM_VERSIONS[version_id]
        pdu: dict[str, Any] = {
            "room_id": "!r:remote.test",
            "type": "m.room.message",
            "sender": "@u:remote.test",
            "content": {"body": "hi"},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "origin_server_ts": NOW + 30 * DAY,  # after the key's validity
        }
        if version_id in ("1",):
            pdu["event_id"] = "$abc:remote.test"
            pdu["prev_events"] = []
        signed = hash_and_sign_event(pdu, REMOTE, key, version)
        event = Event(signed, pdu.get("event_id", "$x"), version)
        if version.enforce_key_validity:
            with pytest.raises(SignatureVerifyError):
                await keyring.verify_event_signatures(event)
            continue
        await keyring.verify_event_signatures(event)  # v1-4 ignore validity
        tampered = Event({**signed, "sender": "@evil:remote.test"}, "$x", version)
        with pytest.raises(SignatureVerifyError):
            await keyring.verify_event_signatures(tampered)


async def test_own_server_and_key_server(database: Database) -> None:
    client, clock = FakeClient(), Clock()
    ours = SigningKey.generate("us1")
    old = SigningKey.generate("us0")
    keyring = Keyring(
        US,
        ours,
        ServerKeyStore(database),
        client,  # type: ignore[arg-type]
        old_keys={old.key_id: (old.verify_key, NOW - DAY)},
        clock_ms=lambda: clock.ms,
        monotonic=lambda: clock.mono,
    )
    await keyring.verify_json_for_server(US, sign_json({"a": 1}, US, ours), at_ts=NOW)
    assert await keyring.get_verify_key(US, old.key_id, NOW - 2 * DAY) == old.verify_key
    with pytest.raises(SignatureVerifyError):
        await keyring.get_verify_key(US, old.key_id, NOW)
    assert client.calls == []

    server = KeyServer(
        US,
        ours,
        keyring,
        old_keys={old.key_id: (old.verify_key, NOW - DAY)},
        refresh_interval_ms=DAY,
        clock_ms=lambda: clock.ms,
    )
    own = server.own_keys()
    assert own["valid_until_ts"] == NOW + DAY
    assert own["old_verify_keys"] == {
        old.key_id: {"key": old.verify_key.base64, "expired_ts": NOW - DAY}
    }
    verify_signed_json(own, US, ours.key_id, ours.verify_key)
    assert server.own_keys() is own  # cached until half its validity
    clock.ms += DAY // 2
    assert server.own_keys()["valid_until_ts"] == NOW + DAY + DAY // 2

    # Notary: another server's keys, fetched, then counter-signed by us.
    remote = SigningKey.generate("r1")
    client.answers[(REMOTE, "/_matrix/key/v2/server")] = remote_keys(remote, clock.ms + DAY)
    answers = await server.query({REMOTE: clock.ms, US: clock.ms, "down.test": clock.ms})
    by_server = {a["server_name"]: a for a in answers}
    assert set(by_server) == {REMOTE, US}
    verify_signed_json(by_server[REMOTE], REMOTE, remote.key_id, remote.verify_key)
    verify_signed_json(by_server[REMOTE], US, ours.key_id, ours.verify_key)
    # Later, with the server down, the cached answer is still served.
    client.answers.clear()
    clock.mono += 100
    (cached,) = await server.query({REMOTE: clock.ms + 30 * DAY})
    verify_signed_json(cached, REMOTE, remote.key_id, remote.verify_key)


async def test_notary_without_pinned_keys_is_checked_with_its_published_keys(
    database: Database,
) -> None:
    client, clock = FakeClient(), Clock()
    key, notary_key = SigningKey.generate("r1"), SigningKey.generate("n1")
    client.answers[(NOTARY, "/_matrix/key/v2/server")] = build_server_keys(
        NOTARY, [notary_key], NOW + DAY
    )
    client.answers[(NOTARY, "/_matrix/key/v2/query")] = {
        "server_keys": [sign_json(remote_keys(key, NOW + DAY), NOTARY, notary_key)]
    }
    keyring = make_keyring(database, client, clock, [Notary(NOTARY, None)])
    assert await keyring.get_verify_key(REMOTE, key.key_id, NOW) == key.verify_key
    assert [c[:2] for c in client.calls] == [
        (REMOTE, "/_matrix/key/v2/server"),
        (NOTARY, "/_matrix/key/v2/query"),
        (NOTARY, "/_matrix/key/v2/server"),
    ]


async def test_key_response_overtaking_a_cache_load_is_not_lost(database: Database) -> None:
    """A load of a server's keys from the store that a fresh key response overtakes must
    not cache the keys it read before: the response's keys are found at once (no 401s
    until the refetch interval has passed)."""
    client, clock = FakeClient(), Clock()
    key = SigningKey.generate("r1")
    store = ServerKeyStore(database)
    gate, read = asyncio.Event(), asyncio.Event()
    real_get_keys = store.get_keys

    async def slow_get_keys(server_name: str) -> Any:
        rows = await real_get_keys(server_name)
        read.set()
        await gate.wait()
        return rows

    store.get_keys = slow_get_keys  # type: ignore[method-assign]
    keyring = Keyring(
        US,
        SigningKey.generate("us1"),
        store,
        client,  # type: ignore[arg-type]
        notaries=[],
        clock_ms=lambda: clock.ms,
        monotonic=lambda: clock.mono,
    )
    loading = asyncio.create_task(keyring.get_verify_key(REMOTE, key.key_id, NOW))
    await read.wait()  # the load has read the store (no keys yet) and waits
    await keyring.accept_response(REMOTE, remote_keys(key, NOW + DAY), from_server=REMOTE)
    gate.set()
    with contextlib.suppress(SignatureVerifyError):
        await loading
    assert await keyring.get_verify_key(REMOTE, key.key_id, NOW) == key.verify_key


async def test_notary_refetches_for_a_later_minimum_and_keeps_keys_the_server_dropped(
    database: Database,
) -> None:
    """A query whose minimum_valid_until_ts no held response meets asks the server again
    at once (not after a refetch interval); what it answers never replaces the response
    for a key it no longer lists, and when it cannot answer the expired one is served."""
    client, clock = FakeClient(), Clock()
    keyring = make_keyring(database, client, clock)
    server = KeyServer(US, SigningKey.generate("us1"), keyring, clock_ms=lambda: clock.ms)
    first, second = SigningKey.generate("k1"), SigningKey.generate("k2")
    expired = NOW - DAY
    path = (REMOTE, "/_matrix/key/v2/server")
    client.answers[path] = remote_keys(first, expired)
    (a1,) = await server.query({REMOTE: 0}, {REMOTE: [first.key_id]})
    assert first.key_id in a1["verify_keys"]
    # Asked again with a later minimum: fetched again (it answers the same expired key).
    (a2,) = await server.query({REMOTE: expired + 1000}, {REMOTE: [first.key_id]})
    assert a2["valid_until_ts"] == expired
    assert [c[:2] for c in client.calls] == [path, path]
    # It now lists only a second key: asked for the first, the first's response stays.
    client.answers[path] = remote_keys(second, expired + 1000)
    await server.query({REMOTE: clock.ms}, {REMOTE: [first.key_id]})
    assert len(client.calls) == 3
    (a3,) = await server.query({REMOTE: expired}, {REMOTE: [first.key_id]})
    assert first.key_id in a3["verify_keys"] and len(client.calls) == 3
    # Down: the newest known response (the second key's) for an unnamed key.
    client.answers.clear()
    (a4,) = await server.query({REMOTE: clock.ms})
    assert second.key_id in a4["verify_keys"]
