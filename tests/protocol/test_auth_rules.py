"""The authorisation rules: named scenarios from tests/protocol/fixtures/auth/*.json, the
auth-events list rule and selection, and malformed input thrown at all of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from starling.protocol.auth_rules import (
    AuthDecision,
    auth_types_for_event,
    check_auth_events_list,
    check_auth_rules,
)
from starling.protocol.canonical_json import encode_canonical_json
from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from starling.protocol.unpadded_base64 import decode_base64, encode_base64

FIXTURES = Path(__file__).parent / "fixtures" / "auth"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
DEFAULT_ROOM_ID = "!room:example.org"


def _load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _replace_placeholders(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {k: _replace_placeholders(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_placeholders(v, names) for v in value]
    return value


def _sign_third_party_invite(pdu: dict[str, Any], key: SigningKey, key_id: str) -> None:
    """Put a real signature over content.third_party_invite.signed where the fixture has
    the "{signature}" placeholder."""
    tpi = pdu.get("content", {}).get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        return
    body = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    signature = encode_base64(key.sign(encode_canonical_json(body)).signature)
    for by_key in signed.get("signatures", {}).values():
        for kid, value in by_key.items():
            if value == "{signature}" and kid == key_id:
                by_key[kid] = signature


class Scenario:
    """A fixture turned into Events."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.name: str = data["name"]
        self.room_version: RoomVersion = get_room_version(data["room_version"])
        self.expected_allowed = {"allow": True, "deny": False}[data["expected"]]
        self.reason: str | None = data.get("reason")
        state_pdus = copy.deepcopy(data["state"])
        event_pdu = copy.deepcopy(data["event"])
        names: dict[str, str] = {}
        key_info = data.get("third_party_key")
        if key_info is not None:
            key = SigningKey(decode_base64(key_info["seed"]))
            verify = bytes(key.verify_key)
            names = {
                "{public_key}": encode_base64(verify),
                "{public_key_urlsafe}": encode_base64(verify, urlsafe=True),
            }
            state_pdus = _replace_placeholders(state_pdus, names)
            event_pdu = _replace_placeholders(event_pdu, names)
            _sign_third_party_invite(event_pdu, key, key_info["key_id"])
        all_pdus = [*state_pdus, event_pdu]
        self.room_id = DEFAULT_ROOM_ID
        if self.room_version.room_id_from_create_event:
            for pdu in all_pdus:
                if pdu["type"] == "m.room.create":
                    self.room_id = "!" + pdu["event_id"][1:]
        self.state: dict[StateKey, Event] = {}
        for pdu in state_pdus:
            event = self._event(pdu)
            self.state[event.state_map_key] = event
        self.event = self._event(event_pdu)

    def _event(self, pdu: dict[str, Any]) -> Event:
        rv = self.room_version
        event_id = pdu["event_id"]
        if not rv.event_id_in_pdu:
            pdu = {k: v for k, v in pdu.items() if k != "event_id"}
        if "room_id" not in pdu and not (
            rv.room_id_from_create_event and pdu["type"] == "m.room.create"
        ):
            pdu["room_id"] = self.room_id
        return Event(pdu, event_id, rv)


SCENARIOS = [Scenario(_load(p)) for p in FIXTURE_FILES]


def test_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 40
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)
    assert {s.room_version.identifier for s in SCENARIOS} == set(KNOWN_ROOM_VERSIONS)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    decision = check_auth_rules(scenario.event, scenario.state)
    assert isinstance(decision, AuthDecision)
    assert decision.allowed is scenario.expected_allowed, decision.reason
    if scenario.reason is not None:
        assert scenario.reason in decision.reason
    if decision.allowed:
        assert decision.reason == ""


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_against_selected_auth_events(scenario: Scenario) -> None:
    """The auth events selection names every state entry the rules read: checking against
    just the selected events (plus the create event, which room 12 implies) gives the same
    decision, and the selected list passes the auth-events rule."""
    event = scenario.event
    if event.type == "m.room.create":
        return
    rv = scenario.room_version
    keys = auth_types_for_event(event.type, event.state_key, event.sender, event.content, rv)
    selected = [scenario.state[k] for k in keys if k in scenario.state]
    pdu = dict(event.pdu)
    if rv.event_id_in_pdu:
        pdu["auth_events"] = [[e.event_id, {"sha256": "x"}] for e in selected]
    else:
        pdu["auth_events"] = [e.event_id for e in selected]
    with_auth = Event(pdu, event.event_id, rv)
    auth_state = {e.state_map_key: e for e in selected}
    create = scenario.state.get(("m.room.create", ""))
    if create is not None:
        auth_state[("m.room.create", "")] = create
        listed = check_auth_events_list(with_auth, selected)
        if event.room_id == create.room_id:
            assert listed.allowed, listed.reason
    decision = check_auth_rules(with_auth, auth_state)
    assert decision.allowed is scenario.expected_allowed, decision.reason


# --- the auth-events list rule and the selection --------------------------------------

V6 = get_room_version("6")
V9 = get_room_version("9")
V12 = get_room_version("12")
ROOM = "!room:example.org"
ALICE, BOB = "@alice:example.org", "@bob:example.org"


def _ev(event_id: str, rv: RoomVersion = V6, **pdu: Any) -> Event:
    pdu.setdefault("room_id", ROOM)
    pdu.setdefault("content", {})
    return Event(pdu, event_id, rv)


CREATE = _ev("$create", type="m.room.create", state_key="", sender=ALICE)
PL = _ev("$pl", type="m.room.power_levels", state_key="", sender=ALICE)
ALICE_JOIN = _ev(
    "$aj", type="m.room.member", state_key=ALICE, sender=ALICE, content={"membership": "join"}
)
JOIN_RULES = _ev("$jr", type="m.room.join_rules", state_key="", sender=ALICE)


def _message(rv: RoomVersion = V6, auth: tuple[str, ...] = ("$create", "$pl", "$aj")) -> Event:
    return _ev("$m", rv, type="m.room.message", sender=ALICE, auth_events=list(auth))


def test_auth_events_list_allowed() -> None:
    assert check_auth_events_list(_message(), [CREATE, PL, ALICE_JOIN]).allowed


def test_auth_events_list_duplicate_key_denied() -> None:
    other_pl = _ev("$pl2", type="m.room.power_levels", state_key="", sender=ALICE)
    msg = _message(auth=("$create", "$pl", "$pl2"))
    d = check_auth_events_list(msg, [CREATE, PL, other_pl])
    assert not d.allowed and "two" in d.reason


def test_auth_events_list_duplicate_id_denied() -> None:
    d = check_auth_events_list(_message(auth=("$create", "$pl", "$pl")), [CREATE, PL])
    assert not d.allowed


def test_auth_events_list_unneeded_entry_denied() -> None:
    d = check_auth_events_list(_message(auth=("$create", "$jr")), [CREATE, JOIN_RULES])
    assert not d.allowed and "not needed" in d.reason


def test_auth_events_list_rejected_entry_denied() -> None:
    d = check_auth_events_list(_message(), [CREATE, PL, ALICE_JOIN], rejected={"$pl"})
    assert not d.allowed and "rejected" in d.reason


def test_auth_events_list_missing_create_denied() -> None:
    d = check_auth_events_list(_message(auth=("$pl", "$aj")), [PL, ALICE_JOIN])
    assert not d.allowed and "m.room.create" in d.reason


def test_auth_events_list_other_room_denied() -> None:
    foreign = _ev("$pl", type="m.room.power_levels", state_key="", sender=ALICE, room_id="!x:y")
    d = check_auth_events_list(_message(), [CREATE, foreign, ALICE_JOIN])
    assert not d.allowed and "another room" in d.reason


def test_auth_events_list_v12_create_listed_denied() -> None:
    create = Event({"type": "m.room.create", "state_key": "", "sender": ALICE}, "$c12", V12)
    room = create.room_id
    pl = _ev("$pl", V12, type="m.room.power_levels", state_key="", sender=ALICE, room_id=room)
    msg = _ev("$m", V12, type="m.room.message", sender=ALICE, room_id=room)
    assert check_auth_events_list(msg, [pl]).allowed
    d = check_auth_events_list(msg, [create, pl])
    assert not d.allowed and "not needed" in d.reason


def test_auth_types_for_event() -> None:
    join = {"membership": "join", "join_authorised_via_users_server": "@carol:example.org"}
    assert auth_types_for_event("m.room.member", BOB, BOB, join, V9) == [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", BOB),
        ("m.room.join_rules", ""),
        ("m.room.member", "@carol:example.org"),
    ]
    # Before restricted joins existed, the authorising user is not selected.
    assert ("m.room.member", "@carol:example.org") not in auth_types_for_event(
        "m.room.member", BOB, BOB, join, V6
    )
    invite = {"membership": "invite", "third_party_invite": {"signed": {"token": "abc"}}}
    assert auth_types_for_event("m.room.member", BOB, ALICE, invite, V6) == [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", ALICE),
        ("m.room.member", BOB),
        ("m.room.join_rules", ""),
        ("m.room.third_party_invite", "abc"),
    ]
    assert auth_types_for_event("m.room.message", None, ALICE, {}, V12) == [
        ("m.room.power_levels", ""),
        ("m.room.member", ALICE),
    ]
    assert auth_types_for_event("m.room.create", "", ALICE, {}, V6) == []
    leave = {"membership": "leave"}
    assert ("m.room.join_rules", "") not in auth_types_for_event(
        "m.room.member", BOB, ALICE, leave, V6
    )


# --- malformed input -------------------------------------------------------------------

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["join", "invite", "leave", "ban", "knock", ALICE, BOB, "100", " 5 "])
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_content_keys = st.sampled_from(
    [
        "membership",
        "join_rule",
        "users",
        "users_default",
        "events",
        "events_default",
        "state_default",
        "ban",
        "kick",
        "invite",
        "redact",
        "notifications",
        "third_party_invite",
        "join_authorised_via_users_server",
        "creator",
        "room_version",
        "additional_creators",
        "m.federate",
        "public_key",
        "public_keys",
        "allow",
    ]
)
_content = st.dictionaries(_content_keys | st.text(max_size=6), _json, max_size=6)
_types = st.sampled_from(
    [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.third_party_invite",
        "m.room.aliases",
        "m.room.redaction",
        "m.room.message",
    ]
)
_users = st.sampled_from([ALICE, BOB, "@carol:other.org", "", "bob", "@:", "@x:y:z"])
_state_keys = st.none() | _users | st.just("") | st.text(max_size=6)


@st.composite
def _pdu(draw: st.DrawFn, event_type: Any = None) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": draw(_types) if event_type is None else event_type,
        "sender": draw(_users | _json),
        "content": draw(_content | _json),
        "room_id": draw(st.sampled_from([ROOM, "!create", "!other:example.org"]) | _json),
    }
    sk = draw(_state_keys | _json)
    if sk is not None:
        pdu["state_key"] = sk
    if draw(st.booleans()):
        pdu["prev_events"] = draw(st.sampled_from([["$create"], [], "x", [["$create", {}]]]))
    if draw(st.booleans()):
        pdu["redacts"] = draw(_json)
    if draw(st.booleans()):
        pdu["signatures"] = draw(_json)
    return pdu


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(sorted(KNOWN_ROOM_VERSIONS)),
    event=_pdu(),
    state=st.lists(_pdu(), max_size=6),
    create_content=_content,
    pl_content=_content | _json,
    with_create=st.booleans(),
)
def test_malformed_input_never_raises(
    version: str,
    event: dict[str, Any],
    state: list[dict[str, Any]],
    create_content: dict[str, Any],
    pl_content: Any,
    with_create: bool,
) -> None:
    rv = get_room_version(version)
    auth_state: dict[StateKey, Event] = {}
    for i, pdu in enumerate(state):
        e = Event(pdu, f"$s{i}", rv)
        auth_state[e.state_map_key] = e
    if with_create:
        create: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": ALICE}
        create["content"] = create_content
        if not rv.room_id_from_create_event:
            create["room_id"] = ROOM
        auth_state[("m.room.create", "")] = Event(create, "$create", rv)
    pl = {"type": "m.room.power_levels", "state_key": "", "sender": ALICE, "content": pl_content}
    auth_state[("m.room.power_levels", "")] = Event(pl, "$pl", rv)
    ev = Event(event, "$ev:example.org", rv)
    decision = check_auth_rules(ev, auth_state)
    assert isinstance(decision, AuthDecision)
    assert isinstance(check_auth_events_list(ev, list(auth_state.values())), AuthDecision)
    keys = auth_types_for_event(ev.type, ev.state_key, ev.sender, ev.content, rv)
    assert all(isinstance(t, str) and isinstance(s, str) for t, s in keys)


_TPI_SCENARIO = next(s for s in SCENARIOS if s.name == "third_party_invite_v1_allowed")


@settings(max_examples=200, deadline=None)
@given(
    signed_extra=st.dictionaries(st.sampled_from(["signatures", "mxid", "token", "x"]), _json),
    invite_content=st.dictionaries(st.sampled_from(["public_key", "public_keys", "x"]), _json),
)
def test_malformed_third_party_invite_never_raises(
    signed_extra: dict[str, Any], invite_content: dict[str, Any]
) -> None:
    s = _TPI_SCENARIO
    pdu = copy.deepcopy(s.event.pdu)
    pdu["content"]["third_party_invite"]["signed"].update(signed_extra)
    event = Event(pdu, s.event.event_id, s.room_version)
    state = dict(s.state)
    key = ("m.room.third_party_invite", "tok123")
    invite = state[key]
    state[key] = Event({**invite.pdu, "content": invite_content}, invite.event_id, s.room_version)
    decision = check_auth_rules(event, state)
    assert isinstance(decision, AuthDecision)
    # The invite's real public key is gone, so nothing can verify any more.
    assert not decision.allowed
