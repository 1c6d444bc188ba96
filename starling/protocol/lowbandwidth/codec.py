"""MSC3079's CBOR bodies and CoAP path enums (pure: no I/O).

CBOR: JSON objects become CBOR maps whose well-known keys may be integers (Appendix A,
version 1). Decoding expands them; a key present both as an integer and as its string
wins as the string (MSC3079: "the string key MUST be used"); a string such as "8" is
never expanded. Only what JSON can express is accepted (no floats: Matrix forbids them;
no byte strings, tags or undefined), to a bounded depth, so a CBOR body means exactly
one JSON body.

Paths: `/9/{roomId}/{eventType}/{txnId}` is the short form of
`/_matrix/client/r0/rooms/{roomId}/send/{eventType}/{txnId}`; the parameters fill the
template left to right. Full paths are always accepted too.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from typing import Any
from urllib.parse import quote

import cbor2

from starling.protocol.lowbandwidth.tables import CBOR_KEYS_V1, PATH_ENUMS_V1

CBOR_CONTENT_FORMAT = 60  # application/cbor (RFC 7252 §12.3 registry, RFC 8949)
MAX_DEPTH = 64
KEY_TO_INT: dict[str, int] = {name: i + 1 for i, name in enumerate(CBOR_KEYS_V1)}
INT_TO_KEY: dict[int, str] = {i + 1: name for i, name in enumerate(CBOR_KEYS_V1)}


class CodecError(ValueError):
    """The body or path is not acceptable; `errcode` is the Matrix error to answer."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(message)
        self.errcode = errcode


def _shorten(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("M_BAD_JSON", "Too deeply nested")
    if isinstance(value, dict):
        return {KEY_TO_INT.get(k, k): _shorten(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, depth + 1) for v in value]
    return value


def encode(value: Any, *, integer_keys: bool = True) -> bytes:
    """JSON value → canonical CBOR (RFC 7049 §3.9 key order), with the integer keys of
    version 1 unless the client did not ask for them."""
    return cbor2.dumps(_shorten(value) if integer_keys else value, canonical=True)


def _expand(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("M_BAD_JSON", "Too deeply nested")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        numbered: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                out[key] = _expand(item, depth + 1)
            elif type(key) is int and key in INT_TO_KEY:
                numbered[INT_TO_KEY[key]] = _expand(item, depth + 1)
            else:
                raise CodecError("M_BAD_JSON", f"Unknown map key {key!r:.40}")
        for key, item in numbered.items():
            out.setdefault(key, item)  # the string form wins
        return out
    if isinstance(value, list):
        return [_expand(v, depth + 1) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if type(value) is int:
        return value
    raise CodecError("M_BAD_JSON", f"{type(value).__name__} has no JSON form here")


def loads(data: bytes) -> Any:
    """CBOR → Python value, keys not expanded; CodecError M_NOT_JSON if malformed."""
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError):
        raise CodecError("M_NOT_JSON", "The body is not well-formed CBOR") from None


def expand(value: Any) -> Any:
    """A `loads` value → JSON value; CodecError M_BAD_JSON if it has no JSON form."""
    return _expand(value)


def decode(data: bytes) -> Any:
    """CBOR body → JSON value; CodecError (M_NOT_JSON / M_BAD_JSON) if it is not one."""
    return _expand(loads(data))


def uses_integer_keys(value: Any, depth: int = 0) -> bool:
    """Whether a decoded (not yet expanded) body uses integer keys anywhere: then the
    client understands version 1 (MSC3079 "Versioning")."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return any(isinstance(k, int) for k in value) or any(
            uses_integer_keys(v, depth + 1) for v in value.values()
        )
    if isinstance(value, list):
        return any(uses_integer_keys(v, depth + 1) for v in value)
    return False


_PARAM = re.compile(r"\{[^}]+\}")
_TEMPLATES: dict[str, tuple[str, int]] = {
    enum: (template.replace("/r0/", "/v3/", 1), len(_PARAM.findall(template)))
    for enum, template in PATH_ENUMS_V1.items()
}
# Full path → (enum, params), for the client: literal segments must match exactly.
_MATCHERS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            "^"
            + _PARAM.sub("([^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
            + "$"
        ),
        enum,
    )
    for enum, (template, _) in _TEMPLATES.items()
]


def expand_path(segments: tuple[str, ...] | list[str]) -> str:
    """CoAP Uri-Path segments (already unescaped) → the HTTP path of the Client-Server
    API (percent-escaped). A one-character first segment is an enum; anything else is
    taken as a full path."""
    if not segments:
        raise CodecError("M_UNRECOGNIZED", "No path")
    first, rest = segments[0], list(segments[1:])
    entry = _TEMPLATES.get(first) if len(first) == 1 else None
    if entry is not None:
        template, count = entry
        if len(rest) != count:
            raise CodecError(
                "M_UNRECOGNIZED", f"Path enum {first} takes {count} parameters, not {len(rest)}"
            )
        params = iter(rest)
        return _PARAM.sub(lambda _m: quote(next(params), safe=""), template)
    return "/" + "/".join(quote(s, safe="") for s in segments)


def compress_path(path: str) -> list[str]:
    """An HTTP path (escaped, v3 or r0) → the shortest Uri-Path segments (unescaped)."""
    from urllib.parse import unquote

    normal = path.replace("/_matrix/client/r0/", "/_matrix/client/v3/", 1)
    for pattern, enum in _MATCHERS:
        match = pattern.match(normal)
        if match:
            return [enum, *(unquote(g) for g in match.groups())]
    return [unquote(s) for s in path.lstrip("/").split("/")]


# --- DEFLATE (opt-in, MSC3079 "DEFLATE"; docs/transports.md) -------------------------
#
# MSC3079 allows DEFLATE when negotiated, and warns of CRIME: compression must be opt-in.
# A client opts in per session with option 65000 (value 1). Each body is compressed on its
# own (raw DEFLATE, RFC 1951) — UDP may lose or reorder messages, so no state is carried
# from one message to the next — against a preset dictionary of strings common in
# Client-Server bodies; a /sync answer is also compressed against the previous answer,
# the one whose `next_batch` is this request's `since` (both sides hold it, named by the
# request itself, so loss and reordering cannot desynchronise them).
DEFLATE_CONTENT_FORMAT = 65060  # experimental range: CBOR, deflated, preset dictionary v1
DEFLATE_SINCE_CONTENT_FORMAT = 65061  # … and the answer named by `since` as dictionary
# … and, before that answer, the first answer of the Observe registration it belongs to
# (an initial sync holds every room ID, member and name the notifications will repeat).
DEFLATE_BASE_CONTENT_FORMAT = 65062
WINDOW = 32768

_COMMON_STRINGS = (
    "m.room.create m.room.member m.room.power_levels m.room.join_rules m.room.name "
    "m.room.topic m.room.avatar m.room.canonical_alias m.room.aliases m.room.encrypted "
    "m.room.encryption m.room.history_visibility m.room.guest_access m.room.redaction "
    "m.room.server_acl m.room.tombstone m.room.pinned_events m.room.third_party_invite "
    "m.reaction m.relates_to m.annotation m.replace m.thread m.in_reply_to rel_type "
    "m.text m.emote m.notice m.image m.file m.audio m.video m.location "
    "org.matrix.custom.html m.megolm.v1.aes-sha2 m.olm.v1.curve25519-aes-sha2 "
    "signed_curve25519 curve25519 ed25519 device_one_time_keys_count "
    "device_unused_fallback_key_types org.matrix.msc2732.device_unused_fallback_key_types "
    "unread_notifications notification_count highlight_count unread_thread_notifications "
    "summary m.heroes m.joined_member_count m.invited_member_count "
    "m.push_rules m.direct m.fully_read m.receipt m.read m.read.private m.typing "
    "m.presence online offline unavailable last_active_ago currently_active "
    "shared public invited joined world_readable can_join forbidden knock restricted "
    "public_chat private_chat trusted_private_chat ban kick leave "
    "guest_access users_default events_default state_default notifications "
    "room_version creator m.federate predecessor membership displayname avatar_url "
    "left org.matrix.msc4222.state_after prev_batch next_batch limited "
    "M_FORBIDDEN M_UNKNOWN_TOKEN M_MISSING_TOKEN M_NOT_FOUND M_LIMIT_EXCEEDED M_UNKNOWN "
    "M_BAD_JSON M_NOT_JSON M_INVALID_PARAM M_USER_IN_USE M_ROOM_IN_USE "
    "m.login.password m.login.token m.login.dummy m.id.user "
    "expires_in_ms refresh_token retry_after_ms "
).split()
PRESET_DICTIONARY: bytes = b"".join(cbor2.dumps(s) for s in _COMMON_STRINGS)


def _zdict(reference: bytes) -> bytes:
    return (PRESET_DICTIONARY + reference)[-WINDOW:]


def deflate(data: bytes, reference: bytes = b"") -> bytes:
    compressor = zlib.compressobj(
        9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _zdict(reference)
    )
    return compressor.compress(data) + compressor.flush()


def inflate(
    data: bytes, max_size: int, reference: bytes = b"", dictionary: bytes | None = None
) -> bytes:
    """The original bytes; CodecError if corrupt, truncated or over `max_size` (a
    decompression bomb stops at the limit, it is never inflated whole). `dictionary`
    replaces the preset one (and `reference`)."""
    zdict = _zdict(reference) if dictionary is None else dictionary
    decompressor = zlib.decompressobj(-15, zdict)
    try:
        out = decompressor.decompress(data, max_size)
    except zlib.error:
        raise CodecError("M_NOT_JSON", "The body is not valid DEFLATE") from None
    if decompressor.unconsumed_tail:
        raise CodecError("M_TOO_LARGE", "The inflated body is too large")
    if not decompressor.eof:
        raise CodecError("M_NOT_JSON", "The DEFLATE body is truncated")
    return out


# --- Compact sync tokens in Uri-Query (Starling's) -------------------------------------
#
# A `since` token is ~120 characters (one position per stream, named) and CoAP never
# compresses options. The client may send Uri-Query `zs=<value>` instead of `since=`:
# the token as raw DEFLATE against a dictionary of the token's usual skeleton, in
# unpadded URL-safe base64 (~30 characters). Only a hint: any token packs, a format
# change only packs worse.
PACKED_SINCE = "zs"
_TOKEN_DICTIONARY = (
    b"t0~s0~account_data.0~device_lists.0~peeks.0~presence.0~receipts.0~to_device.0"
    b"~typing.0~unread_counts.0"
)
MAX_TOKEN = 4096


def pack_token(token: str) -> str | None:
    """The `zs` form of a sync token, or None if it would not be shorter."""
    compressor = zlib.compressobj(
        9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _TOKEN_DICTIONARY
    )
    raw = compressor.compress(token.encode()) + compressor.flush()
    packed = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return packed if len(packed) < len(token) else None


def unpack_token(packed: str) -> str:
    """The token a `zs` value stands for; CodecError M_INVALID_PARAM if malformed."""
    try:
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        token = inflate(raw, MAX_TOKEN, b"", _TOKEN_DICTIONARY).decode()
    except (ValueError, CodecError):
        raise CodecError("M_INVALID_PARAM", "Malformed packed sync token") from None
    return token


# --- Room references (Starling's; docs/transports.md "Room references") ----------------
#
# CoAP never compresses options, and a room ID in a Uri-Path (`/9/{roomId}/...`) costs
# ~45 bytes on every send. In a `{roomId}` slot of a path enum the client may put
# `~` + the first 64 bits of SHA-256(room ID) in unpadded URL-safe base64 (12 characters;
# a room ID always starts with `!`, so the two cannot be confused). The server resolves
# it among the rooms the session's user has joined, and only there: no reference is
# taken as a room the user is not in; an unknown or ambiguous one is answered 4.04
# ROOM_REFERENCE_ERRCODE, and the client repeats the request with the full ID.
ROOM_REFERENCE_PREFIX = "~"
ROOM_REFERENCE_ERRCODE = "ORG.STARLING.UNKNOWN_ROOM_REFERENCE"
_ROOM_SLOT = "{roomId}"


def room_reference(room_id: str) -> str:
    """The short reference of a room ID (pure function of the ID)."""
    digest = hashlib.sha256(room_id.encode()).digest()[:8]
    return ROOM_REFERENCE_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def is_room_reference(segment: str) -> bool:
    return len(segment) == 12 and segment.startswith(ROOM_REFERENCE_PREFIX)


def room_slots(segments: tuple[str, ...] | list[str]) -> list[int]:
    """Indexes of the segments of an enum path that fill a `{roomId}` parameter."""
    if not segments or len(segments[0]) != 1 or segments[0] not in _TEMPLATES:
        return []
    template, count = _TEMPLATES[segments[0]]
    if len(segments) != count + 1:
        return []
    params = _PARAM.findall(template)
    return [i + 1 for i, name in enumerate(params) if name == _ROOM_SLOT]
