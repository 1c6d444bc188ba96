"""Filters (spec: client-server-api "Filtering"): parsing, validation and matching.

A filter arrives as JSON (stored with POST /user/{userId}/filter, or inline in /sync and
/messages). `parse_sync_filter` validates it once into immutable objects whose `matches`
calls are cheap enough for the hot path: type patterns with `*` wildcards are compiled to
backtracking-free globs, sender and room lists become sets. Anything malformed is a 400
`M_BAD_JSON` naming the offending field, never a 500.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from starling.errors import MatrixError
from starling.protocol.glob import compile_glob
from starling.protocol.identifiers import (
    IdentifierError,
    is_valid_room_id,
    is_valid_user_id,
    split_property_path,
)

# A filter's JSON may be at most this big (it is read on every /sync that names it).
MAX_FILTER_BYTES = 32 * 1024
# Entries in any one list of a filter.
MAX_LIST_ENTRIES = 1000
DEFAULT_TIMELINE_LIMIT = 10
# A /sync timeline holds at most this many events per room (Synapse's
# filter_timeline_limit default); larger requests are capped, not refused.
MAX_TIMELINE_LIMIT = 100
# Any other filter limit is capped here.
MAX_LIMIT = 1000


def _bad(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", f"Invalid filter: {msg}")


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"'{where}{key}' must be a list of strings")
    if len(value) > MAX_LIST_ENTRIES:
        raise _bad(f"'{where}{key}' has more than {MAX_LIST_ENTRIES} entries")
    return value


def _user_list(obj: Mapping[str, Any], key: str, where: str) -> frozenset[str] | None:
    value = _str_list(obj, key, where)
    if value is None:
        return None
    for v in value:
        if not is_valid_user_id(v):
            raise _bad(f"'{where}{key}' contains {v!r}, which is not a user ID")
    return frozenset(value)


def _room_list(obj: Mapping[str, Any], key: str, where: str) -> frozenset[str] | None:
    value = _str_list(obj, key, where)
    if value is None:
        return None
    for v in value:
        if not is_valid_room_id(v):
            raise _bad(f"'{where}{key}' contains {v!r}, which is not a room ID")
    return frozenset(value)


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(f"'{where}{key}' must be a boolean")
    return value


def _object(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"'{where}{key}' must be an object")
    return value


class TypePatterns:
    """A list of event type patterns, where `*` matches any run of characters (the
    filter grammar's only wildcard). Exact types are a set lookup; wildcard patterns are
    matched without backtracking (`starling.protocol.glob`): they are user input."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, patterns: Sequence[str]) -> None:
        self._exact = frozenset(p for p in patterns if "*" not in p)
        self._globs = tuple(
            compile_glob(p, question_mark=False) for p in dict.fromkeys(patterns) if "*" in p
        )

    def matches(self, event_type: str) -> bool:
        return event_type in self._exact or any(g.matches(event_type) for g in self._globs)


def _type_matcher(patterns: Sequence[str] | None) -> TypePatterns | None:
    return None if patterns is None else TypePatterns(patterns)


@dataclass(frozen=True)
class EventFilter:
    """An EventFilter or RoomEventFilter: which events of one section to include."""

    limit: int | None = None
    types: TypePatterns | None = None
    not_types: TypePatterns | None = None
    senders: frozenset[str] | None = None
    not_senders: frozenset[str] = frozenset()
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False
    # Nothing is filtered out (the common case: matching can be skipped entirely).
    is_noop: bool = True

    def matches(
        self,
        event_type: str,
        sender: str | None = None,
        room_id: str | None = None,
        content: Mapping[str, Any] | None = None,
    ) -> bool:
        if self.is_noop:
            return True
        if self.not_types is not None and self.not_types.matches(event_type):
            return False
        if self.types is not None and not self.types.matches(event_type):
            return False
        if sender is not None:
            if sender in self.not_senders:
                return False
            if self.senders is not None and sender not in self.senders:
                return False
        if room_id is not None:
            if room_id in self.not_rooms:
                return False
            if self.rooms is not None and room_id not in self.rooms:
                return False
        if self.contains_url is not None:
            has_url = isinstance((content or {}).get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    def matches_json(self, event: Mapping[str, Any], room_id: str | None = None) -> bool:
        """Match an event given as JSON (account data, ephemeral events, presence)."""
        content = event.get("content")
        etype = event.get("type")
        sender = event.get("sender")
        return self.matches(
            etype if isinstance(etype, str) else "",
            sender if isinstance(sender, str) else None,
            room_id,
            content if isinstance(content, dict) else None,
        )

    def filter_json(
        self, events: Iterable[Mapping[str, Any]], room_id: str | None = None
    ) -> list[Mapping[str, Any]]:
        """The events that match, then at most `limit` of them (the last ones)."""
        kept = [e for e in events if self.matches_json(e, room_id)]
        if self.limit is not None and len(kept) > self.limit:
            kept = kept[-self.limit :] if self.limit else []
        return kept

    @property
    def excludes_all_rooms(self) -> bool:
        return self.rooms is not None and not self.rooms


def parse_event_filter(
    obj: Mapping[str, Any], where: str = "", *, room_event: bool = True
) -> EventFilter:
    """Validate one EventFilter (or RoomEventFilter when `room_event`)."""
    limit = obj.get("limit")
    if limit is not None:
        if (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or (isinstance(limit, float) and not limit.is_integer())  # also NaN, infinity
        ):
            raise _bad(f"'{where}limit' must be an integer")
        # The spec asks for a positive limit, but clients send 0 for "state only, no
        # timeline" and Synapse serves it: 0 is accepted, a negative limit is not.
        if limit < 0:
            raise _bad(f"'{where}limit' must not be negative")
        limit = min(int(limit), MAX_LIMIT)
    types = _str_list(obj, "types", where)
    not_types = _str_list(obj, "not_types", where)
    senders = _user_list(obj, "senders", where)
    not_senders = _user_list(obj, "not_senders", where) or frozenset()
    rooms = not_rooms = None
    contains_url = None
    flags = {"lazy_load_members": False, "include_redundant_members": False}
    unread_threads = False
    if room_event:
        rooms = _room_list(obj, "rooms", where)
        not_rooms = _room_list(obj, "not_rooms", where)
        contains_url = _bool(obj, "contains_url", where)
        for key in flags:
            flags[key] = bool(_bool(obj, key, where))
        unread_threads = bool(
            _bool(obj, "unread_thread_notifications", where)
            or _bool(obj, "org.matrix.msc3773.unread_thread_notifications", where)
        )
    noop = (
        types is None
        and not not_types
        and senders is None
        and not not_senders
        and rooms is None
        and not not_rooms
        and contains_url is None
    )
    return EventFilter(
        limit=limit,
        types=_type_matcher(types),
        not_types=_type_matcher(not_types) if not_types else None,
        senders=senders,
        not_senders=not_senders,
        rooms=rooms,
        not_rooms=not_rooms or frozenset(),
        contains_url=contains_url,
        lazy_load_members=flags["lazy_load_members"],
        include_redundant_members=flags["include_redundant_members"],
        unread_thread_notifications=unread_threads,
        is_noop=noop,
    )


NO_FILTER = EventFilter()


@dataclass(frozen=True)
class SyncFilter:
    """A whole Filter: the sections of /sync and how events are formatted."""

    raw: Mapping[str, Any]
    timeline: EventFilter = NO_FILTER
    state: EventFilter = NO_FILTER
    ephemeral: EventFilter = NO_FILTER
    room_account_data: EventFilter = NO_FILTER
    presence: EventFilter = NO_FILTER
    account_data: EventFilter = NO_FILTER
    rooms: frozenset[str] | None = None
    not_rooms: frozenset[str] = frozenset()
    include_leave: bool = False
    event_format: str = "client"
    event_fields: tuple[tuple[str, ...], ...] | None = None

    def includes_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    @property
    def timeline_limit(self) -> int:
        limit = self.timeline.limit if self.timeline.limit is not None else DEFAULT_TIMELINE_LIMIT
        return min(limit, MAX_TIMELINE_LIMIT)

    @property
    def lazy_load_members(self) -> bool:
        return self.state.lazy_load_members


def parse_event_fields(value: Any) -> tuple[tuple[str, ...], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("'event_fields' must be a list of strings")
    if len(value) > MAX_LIST_ENTRIES:
        raise _bad(f"'event_fields' has more than {MAX_LIST_ENTRIES} entries")
    out = []
    for path in value:
        try:
            parts = split_property_path(path)
        except IdentifierError as e:
            raise _bad(f"'event_fields' entry {path!r}: {e}") from None
        if not path or any(not p for p in parts):
            raise _bad(f"'event_fields' entry {path!r} is not a property path")
        out.append(tuple(parts))
    return tuple(out)


def parse_sync_filter(obj: Any) -> SyncFilter:
    """Validate a whole Filter object (spec: definitions/sync_filter.yaml)."""
    if not isinstance(obj, dict):
        raise _bad("a filter must be a JSON object")
    room = _object(obj, "room", "")
    event_format = obj.get("event_format", "client")
    if event_format not in ("client", "federation"):
        raise _bad("'event_format' must be 'client' or 'federation'")
    return SyncFilter(
        raw=obj,
        timeline=parse_event_filter(_object(room, "timeline", "room."), "room.timeline."),
        state=parse_event_filter(_object(room, "state", "room."), "room.state."),
        ephemeral=parse_event_filter(_object(room, "ephemeral", "room."), "room.ephemeral."),
        room_account_data=parse_event_filter(
            _object(room, "account_data", "room."), "room.account_data."
        ),
        presence=parse_event_filter(_object(obj, "presence", ""), "presence.", room_event=False),
        account_data=parse_event_filter(
            _object(obj, "account_data", ""), "account_data.", room_event=False
        ),
        rooms=_room_list(room, "rooms", "room."),
        not_rooms=_room_list(room, "not_rooms", "room.") or frozenset(),
        include_leave=bool(_bool(room, "include_leave", "room.")),
        event_format=event_format,
        event_fields=parse_event_fields(obj.get("event_fields")),
    )


def parse_filter_json(text: str) -> Any:
    """Decode a filter given inline as a query parameter."""
    if len(text.encode()) > MAX_FILTER_BYTES:
        raise MatrixError(400, "M_TOO_LARGE", f"Filter larger than {MAX_FILTER_BYTES} bytes")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_NOT_JSON", "Filter is not valid JSON") from None


DEFAULT_SYNC_FILTER = parse_sync_filter({})
