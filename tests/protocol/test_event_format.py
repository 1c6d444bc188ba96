"""PDU format validation: valid events of every room version, and a table of malformed
ones, each rejected with an EventFormatError naming the problem (never another error)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starling.protocol.event import Event
from starling.protocol.event_format import EventFormatError, parse_pdu, validate_pdu
from starling.protocol.event_signing import hash_and_sign_event
from starling.protocol.hashing import compute_event_id, event_id_from_reference_hash
from starling.protocol.identifiers import is_valid_event_id, is_valid_room_id
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from starling.protocol.signing import SigningKey
from tests.protocol.vectors import vectors

KEY = SigningKey(b"\x01" * 32, "1")
ALL_VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
V12_ROOM = "!" + "A" * 43
HASH_ID_STD = "$" + "a+/" * 14 + "A"  # shaped like a hash in each alphabet
HASH_ID_URL = "$" + "a-_" * 14 + "A"


def _ref(rv: RoomVersion, n: int = 0) -> Any:
    if rv.event_id_in_pdu:
        return [f"$ref{n}:domain", {"sha256": "aGFzaA"}]
    return event_id_from_reference_hash(hashlib.sha256(str(n).encode()).digest(), rv)


def _ref_id(rv: RoomVersion, n: int = 0) -> Any:
    ref = _ref(rv, n)
    return ref[0] if isinstance(ref, list) else ref


def _message(rv: RoomVersion, **overrides: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "sender": "@alice:domain",
        "room_id": V12_ROOM if rv.room_id_from_create_event else "!room:domain",
        "origin_server_ts": 1_700_000_000_000,
        "depth": 7,
        "prev_events": [_ref(rv, 1)],
        "auth_events": [_ref(rv, 2), _ref(rv, 3)],
        "content": {"msgtype": "m.text", "body": "hello"},
        "unsigned": {"age": 12},
    }
    if rv.event_id_in_pdu:
        pdu["event_id"] = "$msg1:domain"
    pdu.update(overrides)
    return hash_and_sign_event(pdu, "domain", KEY, rv)


def _create(rv: RoomVersion) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@alice:domain",
        "origin_server_ts": 1,
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "content": {"room_version": rv.identifier},
    }
    if not rv.room_id_from_create_event:
        pdu["room_id"] = "!room:domain"
        pdu["content"]["creator"] = "@alice:domain"
    if rv.event_id_in_pdu:
        pdu["event_id"] = "$create:domain"
    return hash_and_sign_event(pdu, "domain", KEY, rv)


def _redaction(rv: RoomVersion) -> dict[str, Any]:
    target = _ref_id(rv, 9)
    if rv.redacts_in_content:
        return _message(rv, type="m.room.redaction", content={"redacts": target})
    return _message(rv, type="m.room.redaction", content={}, redacts=target)


# --- valid events ------------------------------------------------------------------------


@pytest.mark.parametrize("rv_id", ALL_VERSIONS)
@pytest.mark.parametrize(
    "builder", [_message, _create, _redaction], ids=["message", "create", "redaction"]
)
def test_valid_events_accepted(
    rv_id: str, builder: Callable[[RoomVersion], dict[str, Any]]
) -> None:
    rv = get_room_version(rv_id)
    pdu = builder(rv)
    validate_pdu(pdu, rv)
    event = parse_pdu(pdu, rv)
    assert isinstance(event, Event)
    assert event.event_id == compute_event_id(pdu, rv)
    assert event.pdu is pdu
    if rv.room_id_from_create_event and pdu["type"] == "m.room.create":
        assert event.room_id == "!" + event.event_id[1:]


@pytest.mark.parametrize("rv_id", ALL_VERSIONS)
def test_limits_are_inclusive(rv_id: str) -> None:
    rv = get_room_version(rv_id)
    pdu = _message(
        rv,
        type="t" * 255,
        state_key="é" * 127,  # 254 bytes
        prev_events=[_ref(rv, i) for i in range(20)],
        auth_events=[_ref(rv, i) for i in range(10)],
        depth=2**53 - 1 if rv.strict_canonical_json else 2**63 - 1,
    )
    validate_pdu(pdu, rv)


@pytest.mark.parametrize("rv_id", ALL_VERSIONS)
def test_size_limit_is_inclusive(rv_id: str) -> None:
    rv = get_room_version(rv_id)
    pdu = _message(rv)
    from starling.protocol.canonical_json import encode_canonical_json

    pad = 65536 - len(encode_canonical_json(pdu))
    pdu["content"]["body"] += "x" * pad
    assert len(encode_canonical_json(pdu)) == 65536
    validate_pdu(pdu, rv)
    pdu["content"]["body"] += "x"
    with pytest.raises(EventFormatError, match="65536"):
        validate_pdu(pdu, rv)


def test_legacy_versions_tolerate_non_canonical_numbers() -> None:
    for rv_id in ("1", "2", "3", "4", "5"):
        rv = get_room_version(rv_id)
        pdu = _message(rv, content={"n": 1.5, "big": 2**60})
        validate_pdu(pdu, rv)
    for rv_id in ("6", "10", "11", "12"):
        rv = get_room_version(rv_id)
        pdu = _message(rv) | {"content": {"n": 1.5}}
        with pytest.raises(EventFormatError, match="float"):
            validate_pdu(pdu, rv)


def test_extra_keys_allowed() -> None:
    # The schemas do not forbid additional properties; old servers send `origin` etc.
    rv = get_room_version("10")
    validate_pdu(_message(rv, origin="domain", prev_state=[], custom={"a": 1}), rv)


def test_v11_top_level_redacts_is_ignored() -> None:
    rv = get_room_version("11")
    validate_pdu(_redaction(rv) | {"redacts": 5}, rv)


# --- id format vectors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "v", vectors("event_id.format.") + vectors("room_id.format."), ids=lambda v: v["id"]
)
def test_identifier_format_vectors(v: dict[str, Any]) -> None:
    rv = get_room_version(v["input"]["room_version"])
    ident = v["input"]["id"]
    if ident.startswith("$"):
        assert is_valid_event_id(ident, rv.event_format) == v["expected"]["well_formed"]
    else:
        assert is_valid_room_id(ident, rv) == v["expected"]["well_formed"]


# --- malformed events --------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], RoomVersion], dict[str, Any]]


def _set(key: str, value: Any) -> Mutation:
    return lambda pdu, rv: pdu | {key: value}


def _drop(key: str) -> Mutation:
    return lambda pdu, rv: {k: v for k, v in pdu.items() if k != key}


def _content(**content: Any) -> Mutation:
    return lambda pdu, rv: pdu | {"content": pdu["content"] | content}


def _only(versions: set[str], mutation: Mutation) -> Mutation:
    """`mutation`, applicable only to the given room versions."""
    mutation.versions = versions  # type: ignore[attr-defined]
    return mutation


V6_UP = {str(i) for i in range(6, 13)}

MALFORMED: list[tuple[str, Mutation, str]] = [
    # missing keys
    *[
        (f"missing {k}", _drop(k), k)
        for k in (
            "type",
            "sender",
            "content",
            "origin_server_ts",
            "depth",
            "hashes",
            "signatures",
            "prev_events",
            "auth_events",
            "room_id",
        )
    ],
    ("missing event_id v1-2", _only({"1", "2"}, _drop("event_id")), "event_id"),
    # wrong types
    ("type int", _set("type", 5), "type"),
    ("type null", _set("type", None), "type"),
    ("sender list", _set("sender", ["@a:b"]), "sender"),
    ("content list", _set("content", []), "content"),
    ("content string", _set("content", "{}"), "content"),
    ("state_key int", _set("state_key", 0), "state_key"),
    ("state_key null", _set("state_key", None), "state_key"),
    ("depth string", _set("depth", "7"), "depth"),
    ("depth bool", _set("depth", True), "depth"),
    ("depth float", _set("depth", 7.0), "depth"),
    ("ts bool", _set("origin_server_ts", False), "origin_server_ts"),
    ("ts string", _set("origin_server_ts", "1"), "origin_server_ts"),
    ("ts float", _set("origin_server_ts", 1.5), "origin_server_ts"),
    (
        "ts beyond int64",
        _only({"1", "2", "3", "4", "5"}, _set("origin_server_ts", 2**63)),
        "origin_server_ts",
    ),
    ("ts beyond canonical", _only(V6_UP, _set("origin_server_ts", 2**53)), "range"),
    ("hashes list", _set("hashes", []), "hashes"),
    ("hashes without sha256", _set("hashes", {"sha1": "x"}), "sha256"),
    ("hashes sha256 int", _set("hashes", {"sha256": 1}), "sha256"),
    ("signatures list", _set("signatures", []), "signatures"),
    ("signatures of server not object", _set("signatures", {"domain": "sig"}), "signatures"),
    ("signature not string", _set("signatures", {"domain": {"ed25519:1": 1}}), "signatures"),
    ("unsigned list", _set("unsigned", []), "unsigned"),
    ("room_id int", _set("room_id", 1), "room_id"),
    ("prev_events object", _set("prev_events", {}), "prev_events"),
    ("auth_events string", _set("auth_events", "$a"), "auth_events"),
    ("prev_events with int", _set("prev_events", [1]), "prev_events"),
    ("prev_events with null", _set("prev_events", [None]), "prev_events"),
    # depth range
    ("depth negative", _set("depth", -1), "depth"),
    ("depth beyond v6 max", _only(V6_UP, _set("depth", 2**53)), "depth"),
    ("depth beyond v1 max", _only({"1", "2", "3", "4", "5"}, _set("depth", 2**63)), "depth"),
    # sizes and counts
    ("type too long", _set("type", "t" * 256), "type"),
    ("type too long in bytes", _set("type", "é" * 128), "type"),
    ("state_key too long", _set("state_key", "s" * 256), "state_key"),
    ("sender too long", _set("sender", "@" + "a" * 250 + ":domain"), "sender"),
    (
        "room_id too long",
        _only({str(i) for i in range(1, 12)}, _set("room_id", "!" + "r" * 250 + ":domain")),
        "room_id",
    ),
    (
        "too many prev_events",
        lambda p, rv: p | {"prev_events": [_ref(rv, i) for i in range(21)]},
        "prev_events",
    ),
    (
        "too many auth_events",
        lambda p, rv: p | {"auth_events": [_ref(rv, i) for i in range(11)]},
        "auth_events",
    ),
    ("oversized", _content(body="x" * 65536), "65536"),
    # identifier shapes
    ("sender without sigil", _set("sender", "alice:domain"), "sender"),
    ("sender without domain", _set("sender", "@alice"), "sender"),
    ("sender bad server name", _set("sender", "@alice:do main"), "sender"),
    ("room_id wrong sigil", _set("room_id", "#room:domain"), "room_id"),
    (
        "room_id without domain (v1-11)",
        _only({str(i) for i in range(1, 12)}, _set("room_id", "!" + "A" * 43)),
        "room_id",
    ),
    ("room_id with domain (v12)", _only({"12"}, _set("room_id", "!room:domain")), "room_id"),
    ("event_id without domain", _only({"1", "2"}, _set("event_id", "$abc")), "event_id"),
    ("event_id wrong sigil", _only({"1", "2"}, _set("event_id", "!abc:domain")), "event_id"),
    (
        "event_id too long",
        _only({"1", "2"}, _set("event_id", "$" + "e" * 250 + ":domain")),
        "event_id",
    ),
    ("event_id int", _only({"1", "2"}, _set("event_id", 5)), "event_id"),
    (
        "event_id present v3+",
        _only({str(i) for i in range(3, 13)}, _set("event_id", "$x:domain")),
        "event_id",
    ),
    ("v1 ref not a pair", _only({"1", "2"}, _set("prev_events", ["$a:domain"])), "pair"),
    ("v1 ref triple", _only({"1", "2"}, _set("prev_events", [["$a:domain", {}, 1]])), "pair"),
    (
        "v1 ref hashes not object",
        _only({"1", "2"}, _set("auth_events", [["$a:domain", "h"]])),
        "hashes",
    ),
    (
        "v1 ref hash not string",
        _only({"1", "2"}, _set("auth_events", [["$a:domain", {"sha256": 1}]])),
        "hashes",
    ),
    ("v1 ref id bad", _only({"1", "2"}, _set("auth_events", [["nope", {}]])), "auth_events"),
    (
        "v3+ ref is a pair",
        _only({str(i) for i in range(3, 13)}, _set("prev_events", [["$a:domain", {}]])),
        "prev_events",
    ),
    (
        "v3+ ref has domain",
        _only({str(i) for i in range(3, 13)}, _set("prev_events", ["$a:domain"])),
        "prev_events",
    ),
    ("v3 ref url-safe", _only({"3"}, _set("prev_events", [HASH_ID_URL])), "prev_events"),
    (
        "v4+ ref standard b64",
        _only({str(i) for i in range(4, 13)}, _set("prev_events", [HASH_ID_STD])),
        "prev_events",
    ),
    (
        "ref hash too short",
        _only({str(i) for i in range(3, 13)}, _set("auth_events", ["$" + "A" * 42])),
        "auth_events",
    ),
    # redacts placement
    ("redacts int v1-10", _only({str(i) for i in range(1, 11)}, _set("redacts", 5)), "redacts"),
    (
        "content.redacts int v11+",
        _only(
            {"11", "12"}, lambda p, rv: p | {"type": "m.room.redaction", "content": {"redacts": 5}}
        ),
        "redacts",
    ),
    # strict canonical JSON, anywhere
    ("float in content v6+", _only(V6_UP, _content(n=1.5)), "float"),
    ("float deep in content v6+", _only(V6_UP, _content(a={"b": [1, {"c": 0.5}]})), "float"),
    ("big int in content v6+", _only(V6_UP, _content(n=2**53)), "range"),
    ("negative big int v6+", _only(V6_UP, _content(n=-(2**53))), "range"),
    ("float in unsigned v6+", _only(V6_UP, _set("unsigned", {"age": 1.5})), "float"),
    ("nan in content", _content(n=float("nan")), "JSON"),
    ("lone surrogate in content", _content(body="\ud800"), "JSON"),
    ("lone surrogate in type", _set("type", "a\udc00"), "type"),
    ("non-JSON value", _content(x=object()), "JSON"),
]


def _malformed_cases() -> list[Any]:
    return [
        pytest.param(rv_id, mutation, reason, id=f"{name}-v{rv_id}")
        for name, mutation, reason in MALFORMED
        for rv_id in sorted(getattr(mutation, "versions", ALL_VERSIONS), key=int)
    ]


@pytest.mark.parametrize(("rv_id", "mutation", "reason"), _malformed_cases())
def test_malformed_rejected(rv_id: str, mutation: Mutation, reason: str) -> None:
    rv = get_room_version(rv_id)
    pdu = mutation(_message(rv), rv)
    with pytest.raises(EventFormatError) as info:
        validate_pdu(pdu, rv)
    assert reason in info.value.reason
    with pytest.raises(EventFormatError):
        parse_pdu(pdu, rv)


@pytest.mark.parametrize("rv_id", ALL_VERSIONS)
@pytest.mark.parametrize("bad", [None, [], "x", 1, True])
def test_non_object_rejected(rv_id: str, bad: Any) -> None:
    with pytest.raises(EventFormatError, match="not a JSON object"):
        validate_pdu(bad, get_room_version(rv_id))


def test_v12_create_must_not_have_room_id() -> None:
    rv = get_room_version("12")
    with pytest.raises(EventFormatError, match="room_id"):
        validate_pdu(_create(rv) | {"room_id": V12_ROOM}, rv)


def test_v11_create_needs_room_id() -> None:
    rv = get_room_version("11")
    pdu = {k: v for k, v in _create(rv).items() if k != "room_id"}
    with pytest.raises(EventFormatError, match="room_id"):
        validate_pdu(pdu, rv)


def test_v12_non_create_needs_room_id() -> None:
    rv = get_room_version("12")
    pdu = {k: v for k, v in _message(rv).items() if k != "room_id"}
    with pytest.raises(EventFormatError, match="room_id"):
        validate_pdu(pdu, rv)


# --- fuzzing: nothing but EventFormatError escapes ---------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
_PDU_KEYS = st.sampled_from(
    [
        "type",
        "sender",
        "room_id",
        "event_id",
        "state_key",
        "content",
        "depth",
        "origin_server_ts",
        "prev_events",
        "auth_events",
        "hashes",
        "signatures",
        "unsigned",
        "redacts",
    ]
)


@settings(max_examples=300, deadline=None)
@given(rv_id=st.sampled_from(ALL_VERSIONS), changes=st.dictionaries(_PDU_KEYS, _json, max_size=3))
def test_fuzz_only_event_format_error(rv_id: str, changes: dict[str, Any]) -> None:
    rv = get_room_version(rv_id)
    pdu = _message(rv) | changes
    try:
        event = parse_pdu(pdu, rv)
    except EventFormatError as e:
        assert e.reason
    else:
        assert event.event_id


def test_nul_in_type_or_state_key_is_refused() -> None:
    from starling.protocol.event_format import EventFormatError, validate_pdu
    from starling.protocol.room_versions import get_room_version

    rv = get_room_version("11")
    base = {
        "type": "m.room.topic",
        "state_key": "",
        "sender": "@a:example.org",
        "room_id": "!r:example.org",
        "content": {},
        "depth": 1,
        "origin_server_ts": 1,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "a" * 43},
        "signatures": {},
    }
    for bad in ({"type": "m.a\x00b"}, {"state_key": "\x00"}):
        with pytest.raises(EventFormatError, match="NUL"):
            validate_pdu({**base, **bad}, rv)
