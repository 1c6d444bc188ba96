"""Fuzz: a PDU from a hostile server, through every pure step of receipt, for every room
version (1-12): JSON text → format validation → content hash → signatures → redaction →
auth rules. Each step may refuse the PDU only with its own declared error; nothing else
may escape (it would turn one bad PDU into a failed transaction or a 500)."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from starling.protocol.auth_rules import AuthDecision, check_auth_rules
from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json_lenient,
    parse_json_lenient,
    parse_json_strict,
)
from starling.protocol.event import Event, StateKey
from starling.protocol.event_format import EventFormatError, parse_pdu
from starling.protocol.event_signing import (
    EventSigningError,
    hash_and_sign_event,
    required_signing_servers,
    verify_event_signature,
)
from starling.protocol.hashing import EventHashError, check_content_hash
from starling.protocol.redaction import RedactionError, redact
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from starling.protocol.signing import SignatureError, SigningKey
from tests.fuzz.strategies import fuzz_settings, json_values, texts

KEY = SigningKey(b"\x02" * 32, "fz")
SERVER = "fuzz.example"
ALICE = f"@alice:{SERVER}"
VERSIONS = sorted(KNOWN_ROOM_VERSIONS, key=int)
DECLARED = (
    CanonicalJsonError,
    EventFormatError,
    EventHashError,
    EventSigningError,
    SignatureError,
    RedactionError,
)


class _Room:
    """A valid small room of one version: create, Alice's join, power levels, join rules."""

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        create_pdu: dict[str, Any] = {
            "type": "m.room.create",
            "state_key": "",
            "sender": ALICE,
            "origin_server_ts": 1,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
            "content": {"room_version": rv.identifier, "creator": ALICE},
        }
        if not rv.room_id_from_create_event:
            create_pdu["room_id"] = f"!room:{SERVER}"
        self.create = self._sign(create_pdu, "create")
        self.room_id = self.create.room_id
        self.state: dict[StateKey, Event] = {("m.room.create", ""): self.create}
        self.add("m.room.member", ALICE, {"membership": "join"})
        self.add("m.room.power_levels", "", {"users": {ALICE: 100}, "state_default": 50})
        self.add(
            "m.room.join_rules",
            "",
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": self.room_id}],
            },
        )

    def _sign(self, pdu: dict[str, Any], name: str) -> Event:
        if self.rv.event_id_in_pdu:
            pdu["event_id"] = f"${name}:{SERVER}"
        return parse_pdu(hash_and_sign_event(pdu, SERVER, KEY, self.rv), self.rv)

    def ref(self, event: Event) -> Any:
        if self.rv.event_id_in_pdu:
            return [event.event_id, {"sha256": "aGFzaA"}]
        return event.event_id

    def template(self, etype: str, state_key: str | None, content: Any) -> dict[str, Any]:
        auth = [e for k, e in self.state.items() if k[0] != "m.room.join_rules"]
        if self.rv.room_id_from_create_event:
            auth = [e for e in auth if e.type != "m.room.create"]
        pdu: dict[str, Any] = {
            "type": etype,
            "room_id": self.room_id,
            "sender": ALICE,
            "origin_server_ts": 1_700_000_000_000,
            "depth": len(self.state) + 1,
            "prev_events": [self.ref(list(self.state.values())[-1])],
            "auth_events": [self.ref(e) for e in auth],
            "content": content,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        return pdu

    def add(self, etype: str, state_key: str, content: dict[str, Any]) -> None:
        event = self._sign(self.template(etype, state_key, content), f"{etype}{len(self.state)}")
        self.state[event.state_map_key] = event


ROOMS = {v: _Room(get_room_version(v)) for v in VERSIONS}

EVENT_SHAPES: list[tuple[str, str | None, dict[str, Any]]] = [
    ("m.room.message", None, {"msgtype": "m.text", "body": "hi"}),
    (
        "m.room.member",
        "@bob:other.example",
        {"membership": "join", "join_authorised_via_users_server": ALICE},
    ),
    (
        "m.room.member",
        "@carol:other.example",
        {"membership": "invite", "third_party_invite": {"signed": {}}},
    ),
    ("m.room.power_levels", "", {"users": {ALICE: 100}, "events": {"m.room.name": 50}}),
    ("m.room.redaction", None, {"redacts": "$target:fuzz.example"}),
    ("m.room.join_rules", "", {"join_rule": "knock_restricted", "allow": []}),
    ("m.room.create", "", {"room_version": "1"}),
    ("m.room.aliases", SERVER, {"aliases": ["#a:fuzz.example"]}),
    ("m.room.history_visibility", "", {"history_visibility": "shared"}),
]

# Keys a mutation may touch, at the top level and inside content.
TOP_KEYS = st.sampled_from(
    [
        "type",
        "state_key",
        "sender",
        "room_id",
        "origin_server_ts",
        "depth",
        "prev_events",
        "auth_events",
        "content",
        "hashes",
        "signatures",
        "unsigned",
        "event_id",
        "redacts",
        "origin",
        "membership",
        "prev_state",
    ]
)
CONTENT_KEYS = st.sampled_from(
    [
        "membership",
        "join_authorised_via_users_server",
        "third_party_invite",
        "users",
        "users_default",
        "events",
        "state_default",
        "ban",
        "kick",
        "redact",
        "invite",
        "notifications",
        "join_rule",
        "allow",
        "redacts",
        "room_version",
        "creator",
        "additional_creators",
        "history_visibility",
        "aliases",
        "body",
    ]
)


@st.composite
def hostile_pdus(draw: st.DrawFn) -> tuple[RoomVersion, dict[str, Any]]:
    version = draw(st.sampled_from(VERSIONS))
    room = ROOMS[version]
    etype, state_key, content = draw(st.sampled_from(EVENT_SHAPES))
    pdu = room.template(etype, state_key, copy.deepcopy(content))
    if room.rv.event_id_in_pdu:
        pdu["event_id"] = draw(st.sampled_from(["$e:fuzz.example", "$x", "e", "$e:other"]))
    pdu = hash_and_sign_event(pdu, SERVER, KEY, room.rv)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "content", "content", "delete"]))
        if where == "top":
            pdu[draw(TOP_KEYS)] = draw(json_values())
        elif where == "content" and isinstance(pdu.get("content"), dict):
            pdu["content"][draw(CONTENT_KEYS)] = draw(json_values())
        elif where == "delete" and pdu:
            pdu.pop(draw(st.sampled_from(sorted(pdu, key=repr))), None)
    if draw(st.booleans()):
        # Signed and hashed again as its sender would, so later steps see a well-signed PDU.
        with contextlib.suppress(DECLARED):
            pdu = hash_and_sign_event(pdu, SERVER, KEY, room.rv)
    return room.rv, pdu


def receive(raw: bytes, rv: RoomVersion) -> None:
    """Every pure step the receipt pipeline runs on one PDU."""
    parse = parse_json_strict if rv.strict_canonical_json else parse_json_lenient
    try:
        pdu = parse(raw)
    except CanonicalJsonError:
        return
    if not isinstance(pdu, dict):
        return
    try:
        event = parse_pdu(pdu, rv)
    except EventFormatError:
        return
    for step in (
        lambda: check_content_hash(pdu),
        lambda: required_signing_servers(pdu, rv),
        lambda: verify_event_signature(pdu, SERVER, KEY.key_id, KEY.verify_key, rv),
        lambda: redact(pdu, rv),
    ):
        with contextlib.suppress(DECLARED):
            step()
    # Accessors every later layer uses.
    _ = (event.is_state, event.membership, event.redacts, event.unsigned, repr(event))
    if event.is_state:
        _ = event.state_map_key
    room = ROOMS[rv.identifier]
    assert isinstance(check_auth_rules(event, room.state), AuthDecision)
    redacted = redact(pdu, rv)
    try:
        redacted_event = parse_pdu(redacted, rv)
    except EventFormatError:
        return
    assert isinstance(check_auth_rules(redacted_event, room.state), AuthDecision)


@fuzz_settings()
@given(hostile_pdus())
def test_hostile_pdu_raises_only_declared_errors(case: tuple[RoomVersion, dict[str, Any]]) -> None:
    rv, pdu = case
    try:
        raw = encode_canonical_json_lenient(pdu)
    except CanonicalJsonError:
        return
    receive(raw, rv)


@fuzz_settings()
@given(
    st.sampled_from(VERSIONS),
    st.binary(max_size=300) | texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
)
def test_garbage_bytes_as_pdu(version: str, raw: bytes) -> None:
    receive(raw, get_room_version(version))


@fuzz_settings()
@given(st.sampled_from(VERSIONS), json_values(max_leaves=40))
def test_any_json_value_as_pdu(version: str, value: Any) -> None:
    try:
        raw = encode_canonical_json_lenient(value)
    except CanonicalJsonError:
        return
    receive(raw, get_room_version(version))
