"""Server ACLs: whether a server may take part in a room (spec: `m.room.server_acl`;
Server-Server API > Server Access Control Lists).

The event's rules, in order: no ACL event → allow; a server name that is an IP literal
when `allow_ip_literals` is `false` → deny; a match in `deny` → deny; a match in `allow` →
allow; otherwise deny. Patterns are case-insensitive globs (`*`, `?`) matched against the
server name without its port, with the linear-time matcher of `protocol.glob` (patterns
come from any room member with the power to send the event). Entries that are not
strings are ignored; `allow_ip_literals` that is not a boolean means true.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starling.protocol.glob import Glob, compile_glob
from starling.protocol.identifiers import IdentifierError, parse_server_name

ACL_EVENT_TYPE = "m.room.server_acl"


def _globs(value: Any) -> tuple[Glob, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(compile_glob(p, ignore_case=True) for p in value if isinstance(p, str))


def _is_ip_literal(host: str) -> bool:
    if host.startswith("["):
        return True  # the server-name grammar only allows an IPv6 address in brackets
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ServerAcl:
    """The compiled content of one `m.room.server_acl` event."""

    allow: tuple[Glob, ...]
    deny: tuple[Glob, ...]
    allow_ip_literals: bool

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> ServerAcl:
        literals = content.get("allow_ip_literals", True)
        return cls(
            allow=_globs(content.get("allow")),
            deny=_globs(content.get("deny")),
            allow_ip_literals=literals if isinstance(literals, bool) else True,
        )

    def allows(self, server_name: str) -> bool:
        try:
            host, _port = parse_server_name(server_name)
        except IdentifierError:
            return False
        if not self.allow_ip_literals and _is_ip_literal(host):
            return False
        if any(g.matches(host) for g in self.deny):
            return False
        return any(g.matches(host) for g in self.allow)


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether `server_name` may take part in a room whose current `m.room.server_acl`
    content is `acl_content` (None: the room has no ACL)."""
    if acl_content is None:
        return True
    return ServerAcl.from_content(acl_content).allows(server_name)
