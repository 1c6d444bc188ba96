"""Helpers the room-extras SyncExtensions share to write their parts of a /sync response."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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


EventMatcher = Callable[[Mapping[str, Any], str | None], bool]


def section_matcher(ctx: SyncContext, section: str) -> EventMatcher:
    """Whether an event (as JSON, with its room or None) passes the request's filter
    for one section: "ephemeral", "room_account_data", "account_data" or "presence"."""
    matches: EventMatcher = getattr(ctx.filters, section).matches_json
    return matches


def wants_thread_counts(ctx: SyncContext) -> bool:
    """Whether the request's timeline filter asks for unread_thread_notifications."""
    return bool(ctx.filters.timeline.unread_thread_notifications)
