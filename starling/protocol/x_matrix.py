"""X-Matrix request authentication (spec: Server-Server API > Authentication > Request
Authentication).

Owns the `Authorization: X-Matrix ...` header: signing a federation request (the JSON
`{method, uri, origin, destination[, content]}` signed with the origin's key), parsing
the header leniently as the spec asks of recipients, and verifying a request against the
origin's verify key. Fetching that key is the keyring's job, not this module's.

Request bodies are encoded leniently: a transaction may carry room version 1-5 PDUs with
floats or big integers, and the sender signed whatever JSON it sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starling.protocol.identifiers import is_valid_server_name
from starling.protocol.signing import (
    SignatureError,
    SigningKey,
    VerifyKey,
    compute_signature,
    split_key_id,
    verify_signed_json,
)

SCHEME = "X-Matrix"


class XMatrixError(ValueError):
    """The Authorization header is malformed, or the request signature does not verify.
    Either way the request gets 401 M_UNAUTHORIZED."""


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    """A parsed X-Matrix header."""

    origin: str
    key: str  # key ID, "ed25519:<version>"
    sig: str  # unpadded base64
    destination: str | None  # optional for compatibility with older servers


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any | None = None
) -> dict[str, Any]:
    """The object that gets signed. `uri` is the raw path and query as sent, starting
    with /_matrix; `content` is the parsed JSON body, None when there is none."""
    obj: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    key: SigningKey,
    *,
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any | None = None,
) -> str:
    """The Authorization header value for the request. Written the way the spec tells
    senders to, for older servers: one space after the scheme, lower-case names, quoted
    values, no whitespace around commas."""
    try:
        sig = compute_signature(
            request_json(method, uri, origin, destination, content), key, strict=False
        )
    except SignatureError as e:
        raise XMatrixError(f"cannot sign request: {e}") from None
    for value in (origin, destination):
        if '"' in value or "\\" in value:
            raise XMatrixError(f"server name {value!r} cannot go in an X-Matrix header")
    return f'{SCHEME} origin="{origin}",destination="{destination}",key="{key.key_id}",sig="{sig}"'


# RFC 9110: token = 1*tchar; quoted-string with quoted-pair escapes. Bare values may also
# hold ':' (the spec asks recipients to accept that for older servers), and '/' and '='
# so that a bare base64 signature is not refused.
_TCHARS = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_PARAM = re.compile(
    rf"""[ \t]*([{_TCHARS}]+)=(?:"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"|([{_TCHARS}:/=]+))[ \t]*""",
    re.ASCII,
)
_SCHEME_PREFIX = re.compile(r"X-Matrix +", re.IGNORECASE | re.ASCII)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_params(header: str) -> dict[str, str]:
    """Every parameter of an X-Matrix header, names lower-cased, values unquoted and
    unescaped. XMatrixError on another scheme, bad syntax or a repeated name."""
    if not isinstance(header, str):
        raise XMatrixError("Authorization header must be a string")
    m = _SCHEME_PREFIX.match(header)
    if m is None:
        raise XMatrixError("Authorization header is not of the X-Matrix scheme")
    params: dict[str, str] = {}
    pos, end = m.end(), len(header)
    while True:
        pm = _PARAM.match(header, pos)
        if pm is None:
            raise XMatrixError(f"malformed X-Matrix parameter at character {pos}")
        name = pm.group(1).lower()
        quoted, bare = pm.group(2), pm.group(3)
        value = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else bare
        if name in params:
            raise XMatrixError(f"X-Matrix parameter {name!r} appears twice")
        params[name] = value
        pos = pm.end()
        if pos == end:
            return params
        if header[pos] != ",":
            raise XMatrixError(f"expected ',' at character {pos} of the X-Matrix header")
        pos += 1


def parse_header(header: str) -> XMatrixAuth:
    """Parse an X-Matrix Authorization header; origin, key and sig are required, unknown
    parameters are ignored. XMatrixError if it is malformed."""
    params = parse_params(header)
    missing = [name for name in ("origin", "key", "sig") if not params.get(name)]
    if missing:
        raise XMatrixError(f"X-Matrix header lacks {', '.join(missing)}")
    origin, destination = params["origin"], params.get("destination")
    if not is_valid_server_name(origin):
        raise XMatrixError(f"X-Matrix origin {origin!r} is not a server name")
    if destination is not None and not is_valid_server_name(destination):
        raise XMatrixError(f"X-Matrix destination {destination!r} is not a server name")
    try:
        split_key_id(params["key"])
    except ValueError as e:
        raise XMatrixError(f"X-Matrix key: {e}") from None
    return XMatrixAuth(origin=origin, key=params["key"], sig=params["sig"], destination=destination)


def verify_request(
    auth: XMatrixAuth,
    verify_key: VerifyKey,
    *,
    method: str,
    uri: str,
    our_server_name: str,
    content: Any | None = None,
) -> None:
    """XMatrixError unless `auth` is `auth.origin`'s valid signature, with `verify_key`
    (the key `auth.key` names), of this request to us.

    A header `destination` other than our name is refused, as the spec requires; without
    one (older servers) the signed JSON is still checked with our name as destination.
    """
    if auth.destination is not None and auth.destination != our_server_name:
        raise XMatrixError(
            f"request is for {auth.destination!r}, not this server ({our_server_name!r})"
        )
    signed: Mapping[str, Any] = {
        **request_json(method, uri, auth.origin, our_server_name, content),
        "signatures": {auth.origin: {auth.key: auth.sig}},
    }
    try:
        verify_signed_json(signed, auth.origin, auth.key, verify_key, strict=False)
    except SignatureError as e:
        raise XMatrixError(f"X-Matrix signature: {e}") from None
