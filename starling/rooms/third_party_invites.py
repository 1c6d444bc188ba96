"""Checking a signed third-party invite before a membership event is built from it.

Spec: client-server-api "Third-party invites" and server-server-api "Third-party
invites". When an identity server learns that an invited address belongs to a Matrix
user, it calls that user's server (/3pid/onbind) with `signed` = {mxid, token,
signatures}; the room's server then sends an m.room.member invite whose content carries
`third_party_invite: {display_name, signed}` (directly, or after
/exchange_third_party_invite from the invitee's server). The auth rules accept it only if
a key of the room's m.room.third_party_invite event (state key = token) signed `signed`.
Before building the event the server also asks the identity server whether the signing
key is still valid (its key_validity_url), as Synapse does, so revoked keys and
unreachable identity servers are refused.

Shared by the client side (onbind, starling.identity) and the federation side
(exchange_third_party_invite): `third_party_invite_content` is the one check both use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from starling.errors import MatrixError, forbidden
from starling.protocol.canonical_json import encode_canonical_json
from starling.protocol.event import Event, StateKey
from starling.protocol.unpadded_base64 import decode_base64

# (key_validity_url, public key in unpadded base64) -> still valid?
KeyValidity = Callable[[str, str], Awaitable[bool]]


def _public_keys(content: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(public key, key_validity_url) of an m.room.third_party_invite, each once."""
    out: list[tuple[str, str | None]] = []
    listed = content.get("public_keys")
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
            url = entry.get("key_validity_url")
            out.append((entry["public_key"], url if isinstance(url, str) else None))
    top = content.get("public_key")
    if isinstance(top, str) and all(k != top for k, _ in out):
        url = content.get("key_validity_url")
        out.append((top, url if isinstance(url, str) else None))
    return out


def signing_key_of(signed: Mapping[str, Any], content: Mapping[str, Any]) -> tuple[str, str | None]:
    """The (public key, key_validity_url) of the invite's keys that signed `signed`;
    M_FORBIDDEN when none did."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        raise forbidden("The signed third-party invite has no signatures")
    try:
        message = encode_canonical_json(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        )
    except ValueError:
        raise forbidden("The signed third-party invite is not canonical JSON") from None
    sigs: list[bytes] = []
    for by_key in signatures.values():
        for value in by_key.values() if isinstance(by_key, dict) else ():
            try:
                raw = decode_base64(value) if isinstance(value, str) else b""
            except ValueError:
                continue
            if len(raw) == 64:
                sigs.append(raw)
    for public_key, url in _public_keys(content):
        try:
            key = VerifyKey(decode_base64(public_key))
        except (ValueError, TypeError):
            continue
        for sig in sigs[:16]:  # bounded work for a hostile signatures object
            try:
                key.verify(message, sig)
            except BadSignatureError:
                continue
            return public_key, url
    raise forbidden("No key of the third-party invite signed it")


async def third_party_invite_content(
    state: Mapping[StateKey, Event],
    sender: str,
    target: str,
    signed: Any,
    key_is_valid: KeyValidity,
) -> dict[str, Any]:
    """The content of the m.room.member invite for `target` from a signed third-party
    invite, after checking it against the room's current `state`: the token's
    m.room.third_party_invite exists and was sent by `sender`, `signed` names `target`,
    a key of that event signed it, and the identity server still vouches for that key.
    Raises MatrixError (403) otherwise."""
    if not isinstance(signed, dict):
        raise MatrixError(400, "M_BAD_JSON", "'signed' must be an object")
    token, mxid = signed.get("token"), signed.get("mxid")
    if not isinstance(token, str) or mxid != target:
        raise forbidden("The signed third-party invite is not for this user")
    invite = state.get(("m.room.third_party_invite", token))
    if invite is None or not invite.content:
        raise forbidden("No third-party invite with this token in the room")
    if invite.sender != sender:
        raise forbidden("The third-party invite was sent by someone else")
    banned = state.get(("m.room.member", target))
    if banned is not None and banned.membership == "ban":
        raise forbidden(f"{target} is banned from the room")
    public_key, url = signing_key_of(signed, invite.content)
    if url is not None:
        try:
            valid = await key_is_valid(url, public_key)
        except Exception:
            valid = False
        if not valid:
            raise forbidden("The identity server does not vouch for the invite's key")
    third_party: dict[str, Any] = {"signed": signed}
    display_name = invite.content.get("display_name")
    if isinstance(display_name, str):
        third_party["display_name"] = display_name
    return {"membership": "invite", "third_party_invite": third_party}
