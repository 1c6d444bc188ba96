"""Helpers the room-extras SyncExtensions share to write their parts of a /sync response."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starling.protocol.glob import compile_glob
from starling.sync.extension import SyncContext


def joined_room(response: dict[str, Any], room_id: str) -> dict[str, Any]:
    """The response's dict for a joined room, created if missing."""
    rooms: dict[str, Any] = response.setdefault("rooms", {}).setdefault("join", {})
    room: dict[str, Any] = rooms.setdefault(room_id, {})
    return room


def add_room_events(
    response: dict[str, Any], room_id: str, section: str, events: list[dict[str, Any]]
) -> None:
    """Append events to a joined room's `section` ("ephemeral", "account_data")."""
    if events:
        joined_room(response, room_id).setdefault(section, {}).setdefault("events", []).extend(
            events
        )


def add_global_events(response: dict[str, Any], section: str, events: list[dict[str, Any]]) -> None:
    if events:
        response.setdefault(section, {}).setdefault("events", []).extend(events)


def _matches(pattern: str, value: str) -> bool:
    # '*' matches any run of characters: the filter grammar's only wildcard. Matched
    # without backtracking: the pattern is user input.
    if "*" not in pattern:
        return pattern == value
    return compile_glob(pattern, question_mark=False).matches(value)


def filter_allows(
    event_filter: Mapping[str, Any] | None, event_type: str, sender: str | None = None
) -> bool:
    """Whether an event passes a filter's `types`/`not_types`/`senders`/`not_senders`."""
    if not event_filter:
        return True
    not_types = event_filter.get("not_types")
    if isinstance(not_types, list) and any(
        isinstance(p, str) and _matches(p, event_type) for p in not_types
    ):
        return False
    types = event_filter.get("types")
    if isinstance(types, list) and not any(
        isinstance(p, str) and _matches(p, event_type) for p in types
    ):
        return False
    if sender is not None:
        not_senders = event_filter.get("not_senders")
        if isinstance(not_senders, list) and sender in not_senders:
            return False
        senders = event_filter.get("senders")
        if isinstance(senders, list) and sender not in senders:
            return False
    return True


def filter_limit(event_filter: Mapping[str, Any] | None, default: int) -> int:
    if not event_filter:
        return default
    limit = event_filter.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(limit, default)
    return default


def room_filter(sync_filter: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    """A room-level event filter ("ephemeral", "account_data", "timeline") from the
    filter given to an extension: either the whole sync filter (under "room") or the
    sections themselves."""
    if not sync_filter:
        return None
    room = sync_filter.get("room")
    if isinstance(room, Mapping) and isinstance(room.get(name), Mapping):
        section: Mapping[str, Any] = room[name]
        return section
    value = sync_filter.get(name if name != "account_data" else "room_account_data")
    return value if isinstance(value, Mapping) else None


def global_filter(sync_filter: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    """A top-level event filter ("account_data", "presence") from an extension's filter."""
    if not sync_filter:
        return None
    value = sync_filter.get(name)
    return value if isinstance(value, Mapping) else None


EventMatcher = Callable[[Mapping[str, Any], str | None], bool]

_ROOM_SECTIONS = {"ephemeral": "ephemeral", "room_account_data": "account_data"}


def section_matcher(ctx: SyncContext, section: str) -> EventMatcher:
    """Whether an event (as JSON, with its room or None) passes the request's filter
    for one section: "ephemeral", "room_account_data", "account_data" or "presence".
    Uses the sync service's parsed filter when given, else the raw filter JSON."""
    parsed = getattr(ctx.sync_filter, section, None) if ctx.sync_filter is not None else None
    if parsed is not None:
        matches: EventMatcher = parsed.matches_json
        return matches
    if section in _ROOM_SECTIONS:
        raw = room_filter(ctx.filter, _ROOM_SECTIONS[section])
    else:
        raw = global_filter(ctx.filter, section)

    def match(event: Mapping[str, Any], room_id: str | None) -> bool:
        if not filter_allows(raw, str(event.get("type", "")), event.get("sender")):
            return False
        if raw and room_id is not None:
            rooms, not_rooms = raw.get("rooms"), raw.get("not_rooms")
            if isinstance(not_rooms, list) and room_id in not_rooms:
                return False
            if isinstance(rooms, list) and room_id not in rooms:
                return False
        return True

    return match


def wants_thread_counts(ctx: SyncContext) -> bool:
    """Whether the request's timeline filter asks for unread_thread_notifications."""
    if ctx.sync_filter is not None:
        return bool(ctx.sync_filter.timeline.unread_thread_notifications)
    timeline = room_filter(ctx.filter, "timeline") or {}
    return bool(timeline.get("unread_thread_notifications"))
