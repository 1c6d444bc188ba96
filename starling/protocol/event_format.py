"""PDU format validation per room version: the first check on receipt of a PDU.

Owns `validate_pdu` (is this JSON a well-formed event of this room version?) and
`parse_pdu` (validate, compute the event ID, wrap it as an `Event`). Sources: the PDU
schemas pdu_v1/v3/v4/v6/v11/v12 (spec data: api/server-server/definitions), Client-Server
API > Size limits, Appendices > Identifier Grammar, and the Canonical JSON sections of
the room versions (strict from room version 6, lenient before).

What is *not* here: anything that needs other events or state (the auth rules), the
content schemas of individual event types beyond what redaction protects, signatures and
hashes. A PDU failing these checks is dropped (spec: Checks performed on receipt of a
PDU, step 1), so we only reject what the spec makes invalid: a server that drops events
its peers accept ends up with holes in its DAG.
"""

from __future__ import annotations

from typing import Any

from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_canonical_json_lenient,
)
from starling.protocol.event import Event
from starling.protocol.hashing import EventHashError, compute_event_id
from starling.protocol.identifiers import is_valid_event_id, is_valid_room_id, is_valid_user_id
from starling.protocol.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]

MAX_PDU_BYTES = 65536
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
MAX_TYPE_BYTES = 255
MAX_STATE_KEY_BYTES = 255
MAX_DEPTH_LEGACY = 2**63 - 1  # pdu_v1/v3/v4 (room versions 1-5)
MAX_DEPTH_CANONICAL = 2**53 - 1  # depth_v6.yaml: canonical JSON's integer range
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class EventFormatError(ValueError):
    """The PDU is malformed for its room version; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _utf8_len(value: str, what: str) -> int:
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventFormatError(f"{what} is not valid UTF-8 (lone surrogate)") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(pdu: JsonDict, key: str, kind: type, kind_name: str) -> Any:
    if key not in pdu:
        raise EventFormatError(f"missing required key {key!r}")
    value = pdu[key]
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise EventFormatError(f"{key!r} must be {kind_name}, not {type(value).__name__}")
    return value


def _check_references(pdu: JsonDict, key: str, limit: int, room_version: RoomVersion) -> None:
    refs = _require(pdu, key, list, "an array")
    if len(refs) > limit:
        raise EventFormatError(f"too many {key}: {len(refs)} (at most {limit})")
    for i, ref in enumerate(refs):
        if room_version.event_format is EventFormat.V1:
            # Room versions 1-2: [event_id, {"sha256": hash}] pairs.
            if not (isinstance(ref, list) and len(ref) == 2):
                raise EventFormatError(f"{key}[{i}] must be an [event_id, hashes] pair")
            ref_id, ref_hashes = ref
            if not isinstance(ref_hashes, dict) or not all(
                isinstance(h, str) for h in ref_hashes.values()
            ):
                raise EventFormatError(f"{key}[{i}] hashes must be an object of strings")
        else:
            ref_id = ref
        if not is_valid_event_id(ref_id, room_version.event_format):
            raise EventFormatError(
                f"{key}[{i}] is not a room version {room_version.identifier} event ID"
            )


def _check_signatures(pdu: JsonDict) -> None:
    signatures = _require(pdu, "signatures", dict, "an object")
    for server, sigs in signatures.items():
        if not isinstance(sigs, dict) or not all(isinstance(s, str) for s in sigs.values()):
            raise EventFormatError(f"signatures of {server!r} must be an object of strings")


def validate_pdu(pdu: JsonDict, room_version: RoomVersion) -> None:
    """Raise EventFormatError if `pdu` is not a well-formed event of `room_version`."""
    if not isinstance(pdu, dict):
        raise EventFormatError("PDU is not a JSON object")

    etype = _require(pdu, "type", str, "a string")
    if _utf8_len(etype, "type") > MAX_TYPE_BYTES:
        raise EventFormatError(f"type is longer than {MAX_TYPE_BYTES} bytes")
    # Not in the spec's grammar, but no database text column can hold NUL (PostgreSQL
    # refuses it), and type and state_key are stored and indexed as text.
    if "\x00" in etype:
        raise EventFormatError("type contains NUL")
    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if not isinstance(state_key, str):
            raise EventFormatError("'state_key' must be a string when present")
        if _utf8_len(state_key, "state_key") > MAX_STATE_KEY_BYTES:
            raise EventFormatError(f"state_key is longer than {MAX_STATE_KEY_BYTES} bytes")
        if "\x00" in state_key:
            raise EventFormatError("state_key contains NUL")

    sender = _require(pdu, "sender", str, "a string")
    if not is_valid_user_id(sender):
        raise EventFormatError("sender is not a user ID (@localpart:server, at most 255 bytes)")

    content = _require(pdu, "content", dict, "an object")

    ts = _require(pdu, "origin_server_ts", int, "an integer")
    if not _INT64_MIN <= ts <= _INT64_MAX:
        raise EventFormatError("origin_server_ts is outside the 64-bit integer range")

    depth = _require(pdu, "depth", int, "an integer")
    max_depth = MAX_DEPTH_CANONICAL if room_version.strict_canonical_json else MAX_DEPTH_LEGACY
    if not 0 <= depth <= max_depth:
        raise EventFormatError(f"depth {depth} is outside [0, {max_depth}]")

    hashes = _require(pdu, "hashes", dict, "an object")
    if not isinstance(hashes.get("sha256"), str):
        raise EventFormatError("hashes.sha256 must be a string")
    _check_signatures(pdu)
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise EventFormatError("'unsigned' must be an object when present")

    _check_references(pdu, "prev_events", MAX_PREV_EVENTS, room_version)
    _check_references(pdu, "auth_events", MAX_AUTH_EVENTS, room_version)

    if room_version.event_id_in_pdu:
        event_id = _require(pdu, "event_id", str, "a string")
        if not is_valid_event_id(event_id, room_version.event_format):
            raise EventFormatError("event_id is not a $opaque:domain ID of at most 255 bytes")
    elif "event_id" in pdu:
        # From room version 3 the ID is the reference hash; a stray event_id key would
        # even be covered by that hash (redaction keeps it).
        raise EventFormatError(
            f"room version {room_version.identifier} PDUs must not carry an event_id"
        )

    if room_version.room_id_from_create_event and etype == "m.room.create":
        if "room_id" in pdu:
            raise EventFormatError("a room version 12 create event must not have a room_id")
    elif not is_valid_room_id(_require(pdu, "room_id", str, "a string"), room_version):
        raise EventFormatError(f"room_id is not a room version {room_version.identifier} room ID")

    if room_version.redacts_in_content:
        if etype == "m.room.redaction" and not isinstance(content.get("redacts", ""), str):
            raise EventFormatError("content.redacts must be a string")
    elif "redacts" in pdu and not isinstance(pdu["redacts"], str):
        raise EventFormatError("'redacts' must be a string when present")

    _check_size_and_json(pdu, room_version)


def _check_size_and_json(pdu: JsonDict, room_version: RoomVersion) -> None:
    """One encoding of the whole PDU checks both the size limit and (room versions 6+)
    that every value anywhere, content included, has a canonical JSON form."""
    try:
        if room_version.strict_canonical_json:
            encoded = encode_canonical_json(pdu)
        else:
            encoded = encode_canonical_json_lenient(pdu)
    except CanonicalJsonError as e:
        raise EventFormatError(
            f"invalid JSON for room version {room_version.identifier}: {e}"
        ) from None
    if len(encoded) > MAX_PDU_BYTES:
        raise EventFormatError(
            f"PDU is {len(encoded)} bytes in canonical JSON (at most {MAX_PDU_BYTES})"
        )


def parse_pdu(pdu: JsonDict, room_version: RoomVersion) -> Event:
    """Validate `pdu`, compute its event ID and return it as an `Event`.

    EventFormatError if it is malformed. Does not check signatures or hashes.
    """
    validate_pdu(pdu, room_version)
    try:
        event_id = compute_event_id(pdu, room_version)
    except EventHashError as e:  # validate_pdu should have caught anything that lands here
        raise EventFormatError(str(e)) from None
    return Event(pdu, event_id, room_version)
