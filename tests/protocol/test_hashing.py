"""Content hashes, reference hashes, event IDs and v12 room IDs against the spec vectors."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import canonicaljson
import pytest

from starling.protocol.hashing import (
    EventHashError,
    add_content_hash,
    check_content_hash,
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    encode_event_json,
    room_id_for_create_event,
)
from starling.protocol.redaction import redact
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from starling.protocol.unpadded_base64 import encode_base64
from tests.protocol.vectors import vectors


def _reference_cases() -> list[Any]:
    out = []
    for v in vectors("event_id.reference_hash."):
        for group in v["expected_by_room_version"]:
            for rv in group["room_versions"]:
                out.append(
                    pytest.param(v["input"]["event"], rv, group["output"], id=f"{v['id']}-v{rv}")
                )
    return out


@pytest.mark.parametrize(("unsigned_event", "rv", "expected"), _reference_cases())
def test_reference_hash_vectors(
    unsigned_event: dict[str, Any], rv: str, expected: dict[str, Any]
) -> None:
    room_version = get_room_version(rv)
    signed = expected["signed_event"]
    # The content hash does not depend on the room version and ignores signatures.
    assert add_content_hash(unsigned_event)["hashes"] == signed["hashes"]
    assert check_content_hash(signed)
    digest = compute_reference_hash(signed, room_version)
    assert encode_base64(digest) == expected["reference_hash_unpadded_base64"].replace(
        "-", "+"
    ).replace("_", "/")
    assert compute_event_id(signed, room_version) == expected["event_id"]


def _single_cases(prefix: str) -> list[Any]:
    return [
        pytest.param(v, rv, id=f"{v['id']}-v{rv}")
        for v in vectors(prefix)
        for rv in v["room_versions"]
    ]


@pytest.mark.parametrize(("vector", "rv"), _single_cases("room_id.v12."))
def test_room_id_vectors(vector: dict[str, Any], rv: str) -> None:
    room_version = get_room_version(rv)
    signed = vector["expected"]["signed_event"]
    assert add_content_hash(vector["input"]["event"])["hashes"] == signed["hashes"]
    assert compute_event_id(signed, room_version) == vector["expected"]["event_id"]
    assert room_id_for_create_event(signed, room_version) == vector["expected"]["room_id"]


@pytest.mark.parametrize(("vector", "rv"), _single_cases("event_id.v12."))
def test_v12_event_id_vectors(vector: dict[str, Any], rv: str) -> None:
    signed = vector["expected"]["signed_event"]
    assert add_content_hash(vector["input"]["event"])["hashes"] == signed["hashes"]
    assert compute_event_id(signed, get_room_version(rv)) == vector["expected"]["event_id"]


@pytest.mark.parametrize("v", vectors("signing.event."), ids=lambda v: v["id"])
def test_content_hash_of_signing_vectors(v: dict[str, Any]) -> None:
    event = copy.deepcopy(v["input"]["event"])
    assert add_content_hash(event)["hashes"] == v["expected"]["hashes"]
    assert event == v["input"]["event"]  # not modified


def test_reference_hash_is_sha256_of_redacted_without_signatures() -> None:
    rv = get_room_version("10")
    event = {
        "type": "m.room.member",
        "state_key": "@a:b",
        "sender": "@a:b",
        "room_id": "!r:b",
        "content": {"membership": "join", "displayname": "A"},
        "signatures": {"b": {"ed25519:1": "x"}},
        "unsigned": {"age": 3},
        "hashes": {"sha256": "abc"},
    }
    redacted = redact(event, rv)
    redacted.pop("signatures")
    expected = hashlib.sha256(canonicaljson.encode_canonical_json(redacted)).digest()
    assert compute_reference_hash(event, rv) == expected
    # Neither signatures nor unsigned nor redacted-away content change the event ID.
    other = {**event, "signatures": {}, "unsigned": {}, "content": {"membership": "join"}}
    assert compute_event_id(other, rv) == compute_event_id(event, rv)


def test_event_id_alphabets() -> None:
    # Find an event whose hash has a character that differs between the two alphabets.
    for i in range(200):
        event = {"type": "x", "content": {"i": i}, "room_id": "!r:d", "sender": "@a:d"}
        v3 = compute_event_id(event, get_room_version("3"))
        if any(c in v3 for c in "+/"):
            break
    v4 = compute_event_id(event, get_room_version("4"))
    assert v3 != v4
    assert v3.translate(str.maketrans("+/", "-_")) == v4
    assert len(v3) == len(v4) == 44


@pytest.mark.parametrize("rv", ["1", "2"])
def test_v1_event_id_is_the_field(rv: str) -> None:
    assert compute_event_id({"event_id": "$abc:d", "type": "x"}, get_room_version(rv)) == "$abc:d"
    with pytest.raises(EventHashError, match="event_id"):
        compute_event_id({"type": "x"}, get_room_version(rv))
    with pytest.raises(EventHashError, match="event_id"):
        compute_event_id({"event_id": 5}, get_room_version(rv))


def test_content_hash_covers_everything_but_unsigned_signatures_hashes() -> None:
    base = {"type": "m.room.message", "content": {"body": "hi"}, "sender": "@a:b"}
    h = compute_content_hash(base)
    extra = {**base, "unsigned": {"age": 1}, "signatures": {"x": {}}, "hashes": {"sha256": "z"}}
    assert compute_content_hash(extra) == h
    assert compute_content_hash({**base, "content": {"body": "ho"}}) != h
    assert compute_content_hash({**base, "origin": "b"}) != h


def test_check_content_hash() -> None:
    event = add_content_hash({"type": "m.room.message", "content": {"body": "hi"}})
    assert check_content_hash(event)
    assert not check_content_hash({**event, "content": {"body": "tampered"}})
    assert not check_content_hash({**event, "hashes": {}})
    assert not check_content_hash({**event, "hashes": "x"})
    assert not check_content_hash({**event, "hashes": {"sha256": 7}})
    assert not check_content_hash({**event, "hashes": {"sha256": "!!not base64"}})
    no_hashes = dict(event)
    del no_hashes["hashes"]
    assert not check_content_hash(no_hashes)


def test_add_content_hash_replaces_other_algorithms() -> None:
    out = add_content_hash({"type": "x", "hashes": {"sha1": "old"}})
    assert set(out["hashes"]) == {"sha256"}


def test_legacy_numbers_hash_like_canonicaljson() -> None:
    # Room versions 1-5 events may carry floats and big integers; hash them the way the
    # stdlib-based encoders of other servers do.
    event = {"type": "m.room.power_levels", "content": {"ban": 50.0, "x": 1e-07, "big": 2**70}}
    assert encode_event_json(event) == canonicaljson.encode_canonical_json(event)
    expected = hashlib.sha256(canonicaljson.encode_canonical_json(event)).digest()
    assert compute_content_hash(event) == expected


@pytest.mark.parametrize(
    "bad",
    [
        {"content": {"x": float("nan")}},
        {"content": {"x": float("inf")}},
        {"content": {"x": "\ud800"}},
        {"content": {"x": object()}},
    ],
)
def test_unhashable_events_raise_event_hash_error(bad: dict[str, Any]) -> None:
    with pytest.raises(EventHashError):
        compute_content_hash(bad)
    with pytest.raises(EventHashError):
        compute_event_id({"type": "m.room.create", **bad}, get_room_version("11"))


@pytest.mark.parametrize("bad", [None, [], "x"])
def test_non_objects_raise_event_hash_error(bad: Any) -> None:
    for rv in KNOWN_ROOM_VERSIONS.values():
        with pytest.raises(EventHashError):
            compute_event_id(bad, rv)
    with pytest.raises(EventHashError):
        compute_content_hash(bad)
    with pytest.raises(EventHashError):
        check_content_hash(bad)


def test_reference_hash_bad_content() -> None:
    with pytest.raises(EventHashError, match="content"):
        compute_reference_hash({"type": "x", "content": []}, get_room_version("4"))


def test_room_id_for_create_event_errors() -> None:
    create = {"type": "m.room.create", "state_key": "", "content": {}, "sender": "@a:b"}
    assert room_id_for_create_event(create, get_room_version("12")).startswith("!")
    with pytest.raises(EventHashError, match="does not derive"):
        room_id_for_create_event(create, get_room_version("11"))
    with pytest.raises(EventHashError, match=r"m\.room\.create"):
        room_id_for_create_event({**create, "type": "m.room.member"}, get_room_version("12"))
    with pytest.raises(EventHashError, match=r"m\.room\.create"):
        room_id_for_create_event({**create, "state_key": "x"}, get_room_version("12"))
