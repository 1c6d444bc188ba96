"""Signing events and checking their signatures (spec: Server-Server API > Signing Events).

Owns: the event signature (ed25519 over the canonical JSON of the *redacted* event without
`signatures` and `unsigned`, so it survives redaction), the hash-then-sign path a server
uses for its own new events, verifying one server's signature on an event, and which
servers must have signed an event in a given room version.

Key handling (SigningKey, VerifyKey, the JSON signing primitives) lives in `signing`; this
module only decides *what* bytes of an event are signed. Those bytes are exactly the
reference hash input (both are the redacted event minus `signatures`/`unsigned`), so one
redaction and one encoding serve each sign or verify.
"""

from __future__ import annotations

from typing import Any

from starling.protocol.hashing import EventHashError, add_content_hash, reference_hash_input
from starling.protocol.identifiers import IdentifierError, check_event_id, parse_user_id
from starling.protocol.room_versions import EventFormat, RoomVersion
from starling.protocol.signing import (
    SignatureError,
    SigningKey,
    VerifyKey,
    check_signature,
    find_signature,
)
from starling.protocol.unpadded_base64 import encode_base64

JsonDict = dict[str, Any]


class EventSigningError(ValueError):
    """The event cannot be signed, or its required signers cannot be determined
    (malformed event). A signature that does not verify is a `signing.SignatureError`."""


def _signing_bytes(pdu: JsonDict, room_version: RoomVersion) -> bytes:
    try:
        return reference_hash_input(pdu, room_version)
    except EventHashError as e:
        raise EventSigningError(f"cannot sign event: {e}") from None


def _add_signature(pdu: JsonDict, server_name: str, key_id: str, signature: str) -> None:
    """Set signatures[server_name][key_id] on `pdu`, a dict the caller owns, without
    touching the (possibly shared) signature objects it already holds."""
    existing = pdu.get("signatures", {})
    if not isinstance(existing, dict):
        raise EventSigningError("'signatures' must be an object")
    ours = existing.get(server_name, {})
    if not isinstance(ours, dict):
        raise EventSigningError(f"'signatures.{server_name}' must be an object")
    pdu["signatures"] = {**existing, server_name: {**ours, key_id: signature}}


def sign_event(
    pdu: JsonDict, server_name: str, key: SigningKey, room_version: RoomVersion
) -> JsonDict:
    """A shallow copy of `pdu` with `server_name`'s signature by `key` added (other
    signatures kept). `pdu` must already carry its `hashes`, which the signature covers."""
    signature = encode_base64(key.sign(_signing_bytes(pdu, room_version)))
    out = dict(pdu)
    _add_signature(out, server_name, key.key_id, signature)
    return out


def hash_and_sign_event(
    pdu: JsonDict, server_name: str, key: SigningKey, room_version: RoomVersion
) -> JsonDict:
    """Add the content hash, then sign: how a server finishes its own new event.

    Room versions 6+ refuse content without a canonical JSON form (floats, integers
    beyond 2^53) here, rather than producing an event every peer would drop.
    """
    try:
        out = add_content_hash(pdu, strict=room_version.strict_canonical_json)
    except EventHashError as e:
        raise EventSigningError(f"cannot hash event: {e}") from None
    signature = encode_base64(key.sign(_signing_bytes(out, room_version)))
    _add_signature(out, server_name, key.key_id, signature)  # `out` is our own copy
    return out


def verify_event_signature(
    pdu: JsonDict,
    server_name: str,
    key_id: str,
    verify_key: VerifyKey,
    room_version: RoomVersion,
) -> None:
    """SignatureError unless `pdu` carries a valid signature by `server_name` under
    `key_id`. Holds for the full event and for any redacted copy of it."""
    signature = find_signature(pdu, server_name, key_id)
    try:
        message = reference_hash_input(pdu, room_version)
    except EventHashError as e:
        raise SignatureError(f"event cannot carry a valid signature: {e}") from None
    check_signature(message, signature, verify_key, server_name, key_id)


def _user_domain(user_id: Any, what: str) -> str:
    try:
        return parse_user_id(user_id).domain
    except IdentifierError as e:
        raise EventSigningError(f"{what}: {e}") from None


def required_signing_servers(pdu: JsonDict, room_version: RoomVersion) -> set[str]:
    """The servers whose signatures `pdu` must carry (spec: Validating hashes and
    signatures on received events; Room Version 8 > Authorisation rules).

    * the sender's server, except for an invite made from a third-party invite, which
      "may be [sent by] a different server" (the `signed` block is checked by the auth
      rules instead; Synapse skips this signature too);
    * room versions 1-2: also the server named in the event ID;
    * restricted joins (room versions 8+): the server of the user in
      `join_authorised_via_users_server`, who vouched for the join.

    EventSigningError if one of those IDs is malformed.
    """
    if not isinstance(pdu, dict):
        raise EventSigningError("event is not a JSON object")
    content = pdu.get("content")
    if not isinstance(content, dict):
        content = {}
    membership = content.get("membership") if pdu.get("type") == "m.room.member" else None

    servers: set[str] = set()
    if not (membership == "invite" and "third_party_invite" in content):
        servers.add(_user_domain(pdu.get("sender"), "sender"))
    if room_version.event_format is EventFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise EventSigningError("room version 1-2 events must carry a string event_id")
        try:
            check_event_id(event_id, EventFormat.V1)
        except IdentifierError as e:
            raise EventSigningError(f"event_id: {e}") from None
        servers.add(event_id.partition(":")[2])
    if (
        room_version.restricted_joins
        and membership == "join"
        and "join_authorised_via_users_server" in content
    ):
        servers.add(
            _user_domain(
                content["join_authorised_via_users_server"], "join_authorised_via_users_server"
            )
        )
    return servers
