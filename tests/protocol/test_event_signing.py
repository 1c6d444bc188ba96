"""Event signing: every signing.event.* vector, verification, required signers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import signedjson.key
import signedjson.sign

from starling.protocol.event_signing import (
    EventSigningError,
    hash_and_sign_event,
    required_signing_servers,
    sign_event,
    verify_event_signature,
)
from starling.protocol.hashing import check_content_hash, compute_event_id
from starling.protocol.redaction import redact
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from starling.protocol.signing import SignatureError, SigningKey
from tests.protocol.vectors import test_key as spec_test_key
from tests.protocol.vectors import vectors


def _key() -> SigningKey:
    tk = spec_test_key()
    return SigningKey.from_seed_base64(tk["seed_unpadded_base64"], tk["key_id"].split(":")[1])


SERVER = spec_test_key()["server_name"]
KEY_ID = spec_test_key()["key_id"]


def _signing_cases() -> list[Any]:
    return [
        pytest.param(v, rv, id=f"{v['id']}-v{rv}")
        for v in vectors("signing.event.")
        for rv in v["room_versions"]
    ]


@pytest.mark.parametrize(("vector", "rv"), _signing_cases())
def test_signing_event_vectors(vector: dict[str, Any], rv: str) -> None:
    room_version = get_room_version(rv)
    event = copy.deepcopy(vector["input"]["event"])
    key = _key()
    signed = hash_and_sign_event(event, SERVER, key, room_version)
    assert signed == vector["expected"]
    assert event == vector["input"]["event"]  # input untouched
    verify_event_signature(signed, SERVER, KEY_ID, key.verify_key, room_version)
    # A signature holds for the redacted copy too.
    verify_event_signature(
        redact(signed, room_version), SERVER, KEY_ID, key.verify_key, room_version
    )


def _id_cases() -> list[Any]:
    out = []
    for v in vectors("event_id.reference_hash."):
        for group in v["expected_by_room_version"]:
            for rv in group["room_versions"]:
                out.append(
                    pytest.param(v["input"]["event"], rv, group["output"], id=f"{v['id']}-v{rv}")
                )
    for prefix in ("room_id.v12.", "event_id.v12."):
        for v in vectors(prefix):
            for rv in v["room_versions"]:
                out.append(
                    pytest.param(v["input"]["event"], rv, v["expected"], id=f"{v['id']}-v{rv}")
                )
    return out


@pytest.mark.parametrize(("event", "rv", "expected"), _id_cases())
def test_hash_sign_then_event_id_vectors(
    event: dict[str, Any], rv: str, expected: dict[str, Any]
) -> None:
    room_version = get_room_version(rv)
    signed = hash_and_sign_event(event, SERVER, _key(), room_version)
    assert signed == expected["signed_event"]
    assert compute_event_id(signed, room_version) == expected["event_id"]


def test_test_key_matches_published_public_key() -> None:
    assert _key().public_key_base64 == spec_test_key()["public_key_unpadded_base64"]


@pytest.mark.parametrize("rv", sorted(KNOWN_ROOM_VERSIONS))
def test_agrees_with_signedjson(rv: str) -> None:
    room_version = get_room_version(rv)
    event = {
        "type": "m.room.member",
        "state_key": "@a:domain",
        "sender": "@a:domain",
        "room_id": "!r:domain",
        "origin_server_ts": 5,
        "depth": 2,
        "prev_events": [],
        "auth_events": [],
        "content": {
            "membership": "join",
            "displayname": "A",
            "join_authorised_via_users_server": "@b:x",
        },
        "unsigned": {"age": 3},
    }
    signed = hash_and_sign_event(event, SERVER, _key(), room_version)
    nacl_key = signedjson.key.decode_signing_key_base64(
        "ed25519", "1", spec_test_key()["seed_unpadded_base64"]
    )
    oracle = signedjson.sign.sign_json(
        redact(signed | {"signatures": {}}, room_version), SERVER, nacl_key
    )
    assert signed["signatures"] == oracle["signatures"]
    assert check_content_hash(signed)


def test_sign_event_keeps_other_signatures_and_does_not_mutate() -> None:
    rv = get_room_version("10")
    event = hash_and_sign_event(
        {
            "type": "x",
            "sender": "@a:domain",
            "content": {},
            "signatures": {"other": {"ed25519:z": "s"}},
        },
        SERVER,
        _key(),
        rv,
    )
    before = copy.deepcopy(event)
    second = SigningKey.generate("second")
    out = sign_event(event, SERVER, second, rv)
    assert event == before
    assert set(out["signatures"]) == {"other", SERVER}
    assert set(out["signatures"][SERVER]) == {KEY_ID, second.key_id}
    verify_event_signature(out, SERVER, KEY_ID, _key().verify_key, rv)
    verify_event_signature(out, SERVER, second.key_id, second.verify_key, rv)


def _signed(rv: str = "11") -> dict[str, Any]:
    return hash_and_sign_event(
        {
            "type": "m.room.message",
            "sender": "@a:domain",
            "room_id": "!r:domain",
            "content": {"body": "hi"},
        },
        SERVER,
        _key(),
        get_room_version(rv),
    )


def test_content_change_keeps_signature_but_breaks_hash() -> None:
    # The signature covers only the redacted form plus the hash: tampering with message
    # content is caught by the content hash, not the signature (spec: redact and keep).
    rv = get_room_version("11")
    tampered = _signed() | {"content": {"body": "evil"}}
    verify_event_signature(tampered, SERVER, KEY_ID, _key().verify_key, rv)
    assert not check_content_hash(tampered)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e | {"sender": "@b:domain"}, "does not verify"),
        (lambda e: e | {"hashes": {"sha256": "AAAA"}}, "does not verify"),
        (lambda e: e | {"signatures": {}}, "not signed by"),
        (lambda e: e | {"signatures": "x"}, "not signed by"),
        (lambda e: e | {"signatures": {SERVER: {}}}, "no signature"),
        (lambda e: e | {"signatures": {SERVER: {KEY_ID: 5}}}, "no signature"),
        (lambda e: e | {"signatures": {SERVER: {KEY_ID: "!!"}}}, "base64"),
        (lambda e: e | {"signatures": {SERVER: {KEY_ID: "AAAA"}}}, "64 bytes"),
        (lambda e: e | {"content": []}, "content"),
    ],
)
def test_verify_failures(mutate: Any, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_event_signature(
            mutate(_signed()), SERVER, KEY_ID, _key().verify_key, get_room_version("11")
        )


def test_verify_wrong_key_and_wrong_version() -> None:
    event = _signed("10")
    with pytest.raises(SignatureError):
        verify_event_signature(
            event, SERVER, KEY_ID, SigningKey.generate().verify_key, get_room_version("10")
        )
    # Signed under v10 rules (keeps `origin`-style keys); v11 redacts differently. The
    # event has no origin, so add one to make the two redactions differ.
    event = hash_and_sign_event(
        {"type": "x", "sender": "@a:domain", "origin": "domain", "content": {}},
        SERVER,
        _key(),
        get_room_version("10"),
    )
    with pytest.raises(SignatureError):
        verify_event_signature(event, SERVER, KEY_ID, _key().verify_key, get_room_version("11"))


@pytest.mark.parametrize("bad", [None, [], "x"])
def test_verify_non_object(bad: Any) -> None:
    with pytest.raises(SignatureError):
        verify_event_signature(bad, SERVER, KEY_ID, _key().verify_key, get_room_version("11"))


def test_verify_key_type_checked() -> None:
    with pytest.raises(SignatureError, match="VerifyKey"):
        verify_event_signature(_signed(), SERVER, KEY_ID, "key", get_room_version("11"))  # type: ignore[arg-type]


def test_hash_and_sign_refuses_non_canonical_in_strict_versions() -> None:
    event = {"type": "x", "sender": "@a:d", "content": {"n": 1.5}}
    with pytest.raises(EventSigningError, match="float"):
        hash_and_sign_event(event, SERVER, _key(), get_room_version("6"))
    with pytest.raises(EventSigningError, match="range"):
        hash_and_sign_event(
            event | {"content": {"n": 2**60}}, SERVER, _key(), get_room_version("12")
        )
    # Room versions 1-5 tolerate them (old rooms hold such events).
    signed = hash_and_sign_event(event, SERVER, _key(), get_room_version("5"))
    verify_event_signature(signed, SERVER, KEY_ID, _key().verify_key, get_room_version("5"))
    assert check_content_hash(signed)


@pytest.mark.parametrize("bad", [{"content": "x"}, {"signatures": []}, {"signatures": {SERVER: 1}}])
def test_sign_errors(bad: dict[str, Any]) -> None:
    event = {"type": "x", "sender": "@a:d", "content": {}} | bad
    with pytest.raises(EventSigningError):
        hash_and_sign_event(event, SERVER, _key(), get_room_version("9"))
    with pytest.raises(EventSigningError):
        sign_event(event, SERVER, _key(), get_room_version("9"))


# --- required signers ------------------------------------------------------------------


def _member(membership: str, **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "sender": "@alice:a.example",
        "state_key": "@alice:a.example",
        "event_id": "$x:c.example",
        "content": {"membership": membership, **content},
    }


@pytest.mark.parametrize(
    ("rv", "event", "expected"),
    [
        ("1", _member("join"), {"a.example", "c.example"}),
        ("2", _member("join") | {"event_id": "$y:a.example"}, {"a.example"}),
        ("3", _member("join"), {"a.example"}),
        ("7", _member("join", join_authorised_via_users_server="@bob:b.example"), {"a.example"}),
        (
            "8",
            _member("join", join_authorised_via_users_server="@bob:b.example"),
            {"a.example", "b.example"},
        ),
        (
            "12",
            _member("join", join_authorised_via_users_server="@bob:b.example"),
            {"a.example", "b.example"},
        ),
        ("12", _member("leave", join_authorised_via_users_server="@bob:b.example"), {"a.example"}),
        ("10", _member("invite", third_party_invite={"signed": {}}), set()),
        ("1", _member("invite", third_party_invite={"signed": {}}), {"c.example"}),
        ("10", _member("invite"), {"a.example"}),
        (
            "11",
            {"type": "m.room.message", "sender": "@u:s.example:8448", "content": {}},
            {"s.example:8448"},
        ),
    ],
)
def test_required_signing_servers(rv: str, event: dict[str, Any], expected: set[str]) -> None:
    assert required_signing_servers(event, get_room_version(rv)) == expected


@pytest.mark.parametrize(
    ("rv", "event", "message"),
    [
        ("11", {"type": "x", "content": {}}, "sender"),
        ("11", {"type": "x", "sender": "alice", "content": {}}, "sender"),
        ("1", {"type": "x", "sender": "@a:b", "content": {}}, "event_id"),
        ("2", {"type": "x", "sender": "@a:b", "event_id": "$nodomain", "content": {}}, "event_id"),
        ("9", _member("join", join_authorised_via_users_server=5), "join_authorised"),
        ("9", _member("join", join_authorised_via_users_server="bob"), "join_authorised"),
    ],
)
def test_required_signing_servers_malformed(rv: str, event: dict[str, Any], message: str) -> None:
    with pytest.raises(EventSigningError, match=message):
        required_signing_servers(event, get_room_version(rv))


def test_required_signing_servers_non_object() -> None:
    with pytest.raises(EventSigningError):
        required_signing_servers([], get_room_version("11"))  # type: ignore[arg-type]
