"""Sync and pagination tokens: opaque to clients, positions in our streams (DESIGN §5).

A sync token (`next_batch`, `since`) is the tuple of every stream's position:

    s<events>                       the room events stream, then per extension stream
    ~<stream_name>.<position>       in name order, e.g. s1042~receipts.17~typing.3

Every character is URL-safe. A stream missing from a token (an extension registered
after the token was issued, or one that failed while building that response) reads as
"no position": that extension serves everything current, as on an initial sync.

A pagination token names a point of a room's history: events at or before it are
behind, events after it are ahead. Two kinds:

    t<depth>-<stream>   topological (/messages and /context `start`/`end`): history is
                        ordered by (depth, stream position), so a backfilled event (negative
                        position) or a gap filled late sits where the graph puts it
    t<stream>           arrival order (/sync `prev_batch`, /relations): a position in the
                        events stream. /messages accepts it, and sync tokens (`s...`, their
                        events position), walking history in topological order from there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from starling.errors import invalid_param
from starling.protocol.numbers import parse_int

STREAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_TOKEN_LENGTH = 1024
MAX_STREAMS = 64


def _int(text: str, token: str) -> int:
    # Positions stay well inside BIGINT, so arithmetic on them never overflows in SQL.
    value = parse_int(text, minimum=-(2**62), maximum=2**62)
    if value is None:
        raise invalid_param(f"Invalid token {token[:80]!r}")
    return value


@dataclass(frozen=True)
class SyncToken:
    events: int
    streams: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def encode(self) -> str:
        tail = "".join(f"~{name}.{pos}" for name, pos in sorted(self.streams.items()))
        return f"s{self.events}{tail}"

    @classmethod
    def parse(cls, token: str) -> SyncToken:
        """A token from a client, or 400 M_INVALID_PARAM."""
        if not token.startswith("s") or len(token) > MAX_TOKEN_LENGTH:
            raise invalid_param(f"Invalid sync token {token[:80]!r}")
        head, *parts = token[1:].split("~")
        if len(parts) > MAX_STREAMS:
            raise invalid_param("Invalid sync token: too many streams")
        events = _int(head, token)
        streams: dict[str, int] = {}
        for part in parts:
            name, dot, pos = part.rpartition(".")
            if not dot or not STREAM_NAME.fullmatch(name) or name in streams:
                raise invalid_param(f"Invalid sync token {token[:80]!r}")
            streams[name] = _int(pos, token)
        return cls(events, MappingProxyType(streams))

    def same_positions(self, other: SyncToken) -> bool:
        return self.events == other.events and dict(self.streams) == dict(other.streams)


_TOPOLOGICAL = re.compile(r"t([0-9]{1,19})-(-?[0-9]{1,19})")


@dataclass(frozen=True)
class HistoryPosition:
    """A point of a room's history: after the event at (depth, stream) in topological
    order, or (depth None) after stream position `stream` in arrival order."""

    stream: int
    depth: int | None = None

    def encode(self) -> str:
        if self.depth is None:
            return pagination_token(self.stream)
        return f"t{self.depth}-{self.stream}"


def pagination_token(position: int) -> str:
    """A stream (arrival order) pagination token."""
    return f"t{position}"


def parse_history_position(token: str) -> HistoryPosition:
    """A /messages `from` or `to`: a topological, stream or sync token; else 400."""
    if len(token) <= 41:
        m = _TOPOLOGICAL.fullmatch(token)
        if m is not None:
            return HistoryPosition(_int(m.group(2), token), _int(m.group(1), token))
    return HistoryPosition(parse_room_position(token))


def parse_room_position(token: str) -> int:
    """The events-stream position of a pagination token (a topological one gives its
    stream part) or a sync token."""
    if token.startswith("t") and len(token) <= 41:
        m = _TOPOLOGICAL.fullmatch(token)
        if m is not None:
            return _int(m.group(2), token)
        if len(token) <= 21:
            return _int(token[1:], token)
    if token.startswith("s"):
        return SyncToken.parse(token).events
    raise invalid_param(f"Invalid pagination token {token[:80]!r}")
