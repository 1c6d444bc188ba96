"""Event hashes and the identifiers derived from them.

Owns the content hash (sha256 over the whole event minus `unsigned`, `signatures` and
`hashes`; spec: Server-Server API > Signing Events > Calculating the content hash), the
reference hash (sha256 over the *redacted* event minus `signatures` and `unsigned`;
"Calculating the reference hash"), event IDs (explicit in room versions 1-2, the reference
hash in standard base64 in room version 3, URL-safe from 4 on) and the room version 12
room ID, which is the create event's event ID with a `!` sigil.

Hashes are computed over the lenient canonical encoding: room versions 1-5 may carry
floats and big integers that their senders hashed as they were. Whether an event is
allowed to carry them is `event_format`'s business, not this module's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_canonical_json_lenient,
)
from starling.protocol.redaction import RedactionError, redact
from starling.protocol.room_versions import EventFormat, RoomVersion
from starling.protocol.unpadded_base64 import decode_base64, encode_base64

JsonDict = dict[str, Any]

_NOT_IN_CONTENT_HASH = frozenset({"unsigned", "signatures", "hashes"})
_NOT_IN_REFERENCE_HASH = frozenset({"unsigned", "signatures"})


class EventHashError(ValueError):
    """The event cannot be hashed (not a JSON object, no JSON form, no event ID...)."""


def encode_event_json(obj: JsonDict, *, strict: bool = False) -> bytes:
    """The canonical JSON that hashes and signatures are computed over.

    Lenient by default (floats and big integers kept, as room versions 1-5 require);
    strict=True refuses them, for building events of room versions 6+. EventHashError if
    `obj` has no (canonical) JSON form.
    """
    try:
        if strict:
            return encode_canonical_json(obj)
        return encode_canonical_json_lenient(obj)
    except CanonicalJsonError as e:
        raise EventHashError(str(e)) from None


def _require_object(pdu: Any) -> None:
    if not isinstance(pdu, dict):
        raise EventHashError("event is not a JSON object")


def compute_content_hash(pdu: JsonDict, *, strict: bool = False) -> bytes:
    """The sha256 content hash of `pdu` (32 raw bytes). strict: see `encode_event_json`."""
    _require_object(pdu)
    stripped = {k: v for k, v in pdu.items() if k not in _NOT_IN_CONTENT_HASH}
    return hashlib.sha256(encode_event_json(stripped, strict=strict)).digest()


def add_content_hash(pdu: JsonDict, *, strict: bool = False) -> JsonDict:
    """A shallow copy of `pdu` with `hashes` set to {"sha256": <its content hash>}.

    Any other hash algorithms already present are dropped: we only know sha256, and a
    stale entry would be signed along with it. strict: see `encode_event_json`.
    """
    digest = compute_content_hash(pdu, strict=strict)
    out = dict(pdu)
    out["hashes"] = {"sha256": encode_base64(digest)}
    return out


def check_content_hash(pdu: JsonDict) -> bool:
    """Whether `hashes.sha256` matches the event's content hash.

    False when the hash is missing or malformed (the event is then treated as redacted,
    spec: "Validating hashes and signatures on received events"). EventHashError only
    if the event cannot be hashed at all.
    """
    _require_object(pdu)
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(claimed, str):
        return False
    try:
        expected = decode_base64(claimed)
    except ValueError:
        return False
    return hmac.compare_digest(expected, compute_content_hash(pdu))


def reference_hash_input(pdu: JsonDict, room_version: RoomVersion) -> bytes:
    """The canonical JSON the reference hash covers: the redacted event minus
    `signatures` and `unsigned`. Exposed so callers that also sign or verify the same
    bytes (they are identical: signing also strips exactly those keys) encode only once.
    """
    try:
        redacted = redact(pdu, room_version)
    except RedactionError as e:
        raise EventHashError(str(e)) from None
    for key in _NOT_IN_REFERENCE_HASH:
        redacted.pop(key, None)  # redact() returned a fresh top-level dict
    return encode_event_json(redacted)


def compute_reference_hash(pdu: JsonDict, room_version: RoomVersion) -> bytes:
    """The sha256 reference hash of `pdu` in this room version (32 raw bytes)."""
    return hashlib.sha256(reference_hash_input(pdu, room_version)).digest()


def event_id_from_reference_hash(digest: bytes, room_version: RoomVersion) -> str:
    """`$` + the hash in the room version's base64 alphabet (room versions 3+)."""
    if room_version.event_format is EventFormat.V1:
        raise EventHashError(
            f"room version {room_version.identifier} event IDs are not reference hashes"
        )
    return "$" + encode_base64(digest, urlsafe=room_version.event_format is EventFormat.V3)


def compute_event_id(pdu: JsonDict, room_version: RoomVersion) -> str:
    """The event's ID: its `event_id` field in room versions 1-2, else from its reference hash."""
    _require_object(pdu)
    if room_version.event_format is EventFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise EventHashError(
                f"room version {room_version.identifier} events must carry a string event_id"
            )
        return event_id
    return event_id_from_reference_hash(compute_reference_hash(pdu, room_version), room_version)


def room_id_for_create_event(pdu: JsonDict, room_version: RoomVersion) -> str:
    """The room ID a room version 12 create event defines: `!` + its event ID's hash.

    EventHashError for other room versions (their room IDs are chosen, not derived) and
    for events that are not a create event.
    """
    if not room_version.room_id_from_create_event:
        raise EventHashError(
            f"room version {room_version.identifier} does not derive room IDs from the create event"
        )
    _require_object(pdu)
    if pdu.get("type") != "m.room.create" or pdu.get("state_key") != "":
        raise EventHashError(
            "only an m.room.create event with an empty state_key defines a room ID"
        )
    return "!" + compute_event_id(pdu, room_version)[1:]
