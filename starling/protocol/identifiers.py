"""Identifier grammars (spec: Appendices > Identifier Grammar, Dot-separated property
paths; Room Versions > Room version grammar).

Owns parsing and validating server names, user IDs (the strict v1.8 grammar and the
historical one servers must still accept), room IDs (with and without a domain), event
IDs per event format, room aliases, room version strings, the namespaced and opaque
identifier grammars, the suggested mapping of other character sets onto user-ID
localparts, and splitting dot-separated property paths.

Every parser raises `IdentifierError` (a ValueError) with the reason; every `is_valid_*`
returns a bool and never raises.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from starling.protocol.room_versions import EventFormat, RoomVersion

MAX_ID_BYTES = 255
"""User IDs, room IDs, room aliases and event IDs: at most 255 bytes of UTF-8."""

MAX_ROOM_VERSION_LENGTH = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class IdentifierError(ValueError):
    """An identifier does not follow its grammar."""


# --- server names ----------------------------------------------------------------------

# server_name = hostname [ ":" port ]; port = 1*5DIGIT;
# hostname = IPv4address / "[" IPv6address "]" / dns-name. A dotted quad is also a
# dns-name (dns-char includes digits and "."), so it needs no separate branch.
_SERVER_NAME = re.compile(
    r"(?P<host>\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\]|[0-9A-Za-z.\-]{1,255})(?::(?P<port>[0-9]{1,5}))?",
    re.ASCII,
)


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """`"example.org:8448"` -> `("example.org", 8448)`; `"[::1]"` -> `("[::1]", None)`.

    Follows the spec's grammar exactly (so a 6-digit port is refused, unlike Synapse), and
    checks IPv6 literals against RFC 3513 as the spec asks.
    """
    if not isinstance(server_name, str):
        raise IdentifierError("server name must be a string")
    m = _SERVER_NAME.fullmatch(server_name)
    if m is None:
        raise IdentifierError(f"invalid server name {server_name!r}")
    ipv6 = m.group("ipv6")
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            raise IdentifierError(f"invalid IPv6 literal in server name {server_name!r}") from None
    port = m.group("port")
    return m.group("host"), int(port) if port is not None else None


def is_valid_server_name(server_name: str) -> bool:
    try:
        parse_server_name(server_name)
    except IdentifierError:
        return False
    return True


# --- common helpers --------------------------------------------------------------------


def _check_length(identifier: str, what: str) -> None:
    try:
        size = len(identifier.encode("utf-8"))
    except UnicodeEncodeError:
        raise IdentifierError(f"{what} contains a lone surrogate") from None
    if size > MAX_ID_BYTES:
        raise IdentifierError(f"{what} is {size} bytes; the limit is {MAX_ID_BYTES}")


def _split_sigil_id(identifier: str, sigil: str, what: str) -> tuple[str, str]:
    """`&localpart:domain` -> (localpart, domain), with the rules every such ID shares:
    the sigil, the byte limit, no NUL in the localpart, a valid server name. The
    localpart cannot contain ':', so the first ':' separates it from the domain."""
    if not isinstance(identifier, str):
        raise IdentifierError(f"{what} must be a string")
    if not identifier.startswith(sigil):
        raise IdentifierError(f"{what} {identifier!r} must start with {sigil!r}")
    _check_length(identifier, what)
    localpart, sep, domain = identifier[1:].partition(":")
    if not sep:
        raise IdentifierError(f"{what} {identifier!r} has no ':domain'")
    if _CONTROL.search(localpart):
        # The grammar forbids only NUL; we refuse every C0 control and DEL too: such an
        # ID cannot be shown, logged or typed, and no real server mints one.
        raise IdentifierError(f"{what} {identifier!r} contains a control character")
    if not is_valid_server_name(domain):
        raise IdentifierError(f"{what} {identifier!r} has an invalid server name")
    return localpart, domain


# --- user IDs --------------------------------------------------------------------------

_STRICT_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+", re.ASCII)
_COMPLIANT_LOCALPART = re.compile(r"[\x21-\x7e]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class UserID:
    localpart: str
    domain: str

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.domain}"

    @property
    def has_strict_localpart(self) -> bool:
        """The localpart follows the current grammar (a-z 0-9 . _ = - / +)."""
        return is_valid_localpart(self.localpart)

    @property
    def is_compliant(self) -> bool:
        """Not "non-compliant" in the spec's sense: a non-empty localpart within U+0021 to
        U+007E. Servers SHOULD NOT forward non-compliant user IDs to clients outside the
        context of an event."""
        return _COMPLIANT_LOCALPART.fullmatch(self.localpart) is not None


def is_valid_localpart(localpart: str) -> bool:
    """The current user-ID localpart grammar, for IDs this server creates."""
    return isinstance(localpart, str) and _STRICT_LOCALPART.fullmatch(localpart) is not None


def parse_user_id(user_id: str, *, strict: bool = False) -> UserID:
    """Parse `@localpart:domain`.

    strict=False is the historical grammar every server MUST accept (any code points but
    ':' and NUL, even an empty localpart); strict=True is the current grammar, for IDs
    being created. Both enforce the 255-byte limit and the server-name grammar.
    """
    localpart, domain = _split_sigil_id(user_id, "@", "user ID")
    if strict and not is_valid_localpart(localpart):
        raise IdentifierError(
            f"user ID {user_id!r}: localpart must be non-empty and use only a-z 0-9 . _ = - / +"
        )
    return UserID(localpart, domain)


def is_valid_user_id(user_id: str, *, strict: bool = False) -> bool:
    try:
        parse_user_id(user_id, strict=strict)
    except IdentifierError:
        return False
    return True


def map_to_localpart(text: str, case_sensitive: bool = False) -> str:
    """The spec's suggested mapping of any string onto the localpart alphabet.

    Upper-case ASCII is lower-cased; with case_sensitive it is also prefixed with '_'
    (and a real '_' doubled) so that 'A' and 'a' stay distinct. Other bytes outside the
    alphabet, and '=', become '=' plus two lower-case hex digits of each UTF-8 byte.
    Unlike Synapse we do not also escape a leading '_'.
    """
    out: list[str] = []
    for byte in text.encode("utf-8", errors="surrogatepass"):
        ch = chr(byte)
        if "A" <= ch <= "Z":
            out.append("_" + ch.lower() if case_sensitive else ch.lower())
        elif ch == "_" and case_sensitive:
            out.append("__")
        elif ch != "=" and _STRICT_LOCALPART.fullmatch(ch):
            out.append(ch)
        else:
            out.append(f"={byte:02x}")
    return "".join(out)


# --- room aliases ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomAlias:
    localpart: str
    domain: str

    def __str__(self) -> str:
        return f"#{self.localpart}:{self.domain}"


def parse_room_alias(alias: str) -> RoomAlias:
    """Parse `#localpart:domain` (any code points but ':' and NUL in the localpart)."""
    localpart, domain = _split_sigil_id(alias, "#", "room alias")
    return RoomAlias(localpart, domain)


def is_valid_room_alias(alias: str) -> bool:
    try:
        parse_room_alias(alias)
    except IdentifierError:
        return False
    return True


# --- hash-based IDs (event IDs from room version 3, room IDs from version 12) -----------

# Unpadded base64 of 32 bytes: 43 characters, the last carrying 2 zero bits (its value is
# a multiple of 4), so exactly one spelling per hash.
_HASH_STANDARD = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]", re.ASCII)
_HASH_URLSAFE = re.compile(r"[A-Za-z0-9\-_]{42}[AEIMQUYcgkosw048]", re.ASCII)


# --- room IDs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomID:
    opaque_id: str
    domain: str | None
    """None for domain-less room IDs (room version 12: `!` + the create event's hash)."""

    def __str__(self) -> str:
        return f"!{self.opaque_id}" if self.domain is None else f"!{self.opaque_id}:{self.domain}"


def parse_room_id(room_id: str, room_version: RoomVersion | None = None) -> RoomID:
    """Parse a room ID. With a room version, only its form is accepted (domain-less hash
    for versions that derive the room ID from the create event, `!opaque:domain` before);
    without one, either form."""
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        raise IdentifierError(f"room ID {room_id!r} must start with '!'")
    domainless = room_version.room_id_from_create_event if room_version is not None else None
    if domainless is not False and _HASH_URLSAFE.fullmatch(room_id, 1):
        return RoomID(room_id[1:], None)
    if domainless:
        raise IdentifierError(
            f"room ID {room_id!r}: room version {room_version and room_version.identifier} "
            "needs '!' + the URL-safe base64 sha256 of the create event"
        )
    localpart, domain = _split_sigil_id(room_id, "!", "room ID")
    return RoomID(localpart, domain)


def is_valid_room_id(room_id: str, room_version: RoomVersion | None = None) -> bool:
    try:
        parse_room_id(room_id, room_version)
    except IdentifierError:
        return False
    return True


# --- event IDs ---------------------------------------------------------------------------


def check_event_id(event_id: str, event_format: EventFormat | None = None) -> None:
    """IdentifierError unless `event_id` is well formed for `event_format`: `$opaque:domain`
    (room versions 1-2), `$` + standard base64 sha256 (3), `$` + URL-safe base64 sha256
    (4+). Without a format, any of them."""
    if not isinstance(event_id, str) or not event_id.startswith("$"):
        raise IdentifierError(f"event ID {event_id!r} must start with '$'")
    if event_format in (None, EventFormat.V3) and _HASH_URLSAFE.fullmatch(event_id, 1):
        return
    if event_format in (None, EventFormat.V2) and _HASH_STANDARD.fullmatch(event_id, 1):
        return
    if event_format in (None, EventFormat.V1):
        _split_sigil_id(event_id, "$", "event ID")
        return
    raise IdentifierError(
        f"event ID {event_id!r} is not '$' + the base64 sha256 that {event_format} needs"
    )


def is_valid_event_id(event_id: str, event_format: EventFormat | None = None) -> bool:
    try:
        check_event_id(event_id, event_format)
    except IdentifierError:
        return False
    return True


# --- other grammars ------------------------------------------------------------------------

_ROOM_VERSION = re.compile(r"[a-z0-9.\-]{1,32}", re.ASCII)
_NAMESPACED = re.compile(r"[a-z][a-z0-9._\-]{0,254}", re.ASCII)
_OPAQUE = re.compile(r"[0-9A-Za-z\-._~]{1,255}", re.ASCII)


def is_valid_room_version(version: str) -> bool:
    """The room version grammar: 1-32 characters of a-z 0-9 . -"""
    return isinstance(version, str) and _ROOM_VERSION.fullmatch(version) is not None


def is_valid_namespaced_identifier(identifier: str) -> bool:
    """Common Namespaced Identifier Grammar: [a-z][a-z0-9._-]*, 1-255 characters."""
    return isinstance(identifier, str) and _NAMESPACED.fullmatch(identifier) is not None


def is_valid_opaque_identifier(identifier: str) -> bool:
    """Opaque Identifier Grammar: 1-255 of [0-9A-Za-z-._~] (RFC 3986 unreserved)."""
    return isinstance(identifier, str) and _OPAQUE.fullmatch(identifier) is not None


# --- dot-separated property paths ------------------------------------------------------------


def split_property_path(path: str) -> list[str]:
    """`content.m\\.relates_to` -> `["content", "m.relates_to"]`.

    Only `\\.` and `\\\\` are escapes; any other backslash is literal (`\\x` stays `\\x`),
    as the spec reserves other escapes for the future.
    """
    if not isinstance(path, str):
        raise IdentifierError("property path must be a string")
    parts: list[str] = []
    current: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "\\" and i + 1 < n and path[i + 1] in ".\\":
            current.append(path[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def escape_property_name(name: str) -> str:
    """The inverse for one name: escape '\\' and '.' (and nothing else)."""
    return name.replace("\\", "\\\\").replace(".", "\\.")


def join_property_path(names: list[str]) -> str:
    return ".".join(escape_property_name(n) for n in names)
