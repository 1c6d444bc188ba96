"""How other areas contribute sections to /sync.

The sync service owns the token and the rooms/timeline/state parts. Every other stream
(typing, receipts, account data, presence, to-device, device lists, one-time-key counts)
is a `SyncExtension`: it names its position in the sync token, says where that stream is
now, and writes its part into the response being built. The sync service calls each
extension once per /sync with the range (since, upto] of its own stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from starling.sync.filtering import SyncFilter, parse_sync_filter


@dataclass
class SyncContext:
    user_id: str
    device_id: str | None
    # This extension's stream range: (since, upto]. since is None on an initial sync
    # (or full_state), meaning "everything current".
    since: int | None
    upto: int
    # Rooms in the response, by section; per-room dicts can be filled in through `room`.
    joined_rooms: frozenset[str] = frozenset()
    full_state: bool = False
    # The request's whole filter JSON as validated ({} when none); `sync_filter` below
    # is the same, parsed.
    filter: dict[str, Any] = field(default_factory=dict)
    # The request's set_presence ("online", "offline", "unavailable"), None if not given:
    # for the presence extension.
    set_presence: str | None = None
    # The same filter, validated (parsed from `filter` when not given): `.presence`,
    # `.account_data`, `.ephemeral`, `.room_account_data` are EventFilters with
    # `matches_json(event, room_id)` and `filter_json(events, room_id)` (which also
    # applies the section's `limit`). Extensions read it as `filters`.
    sync_filter: SyncFilter | None = None
    # False for the WebSocket's server-chained polls: `since` is a response the server
    # pushed, not one the client has processed, so nothing may be consumed by it (the
    # to-device inbox is only read, not acknowledged; docs/transports.md).
    acknowledge: bool = True
    # Incremental syncs: users who came into the user's view in the window (members of
    # rooms joined in it, users joining or invited to the user's rooms): the presence
    # extension sends their current presence even when it did not change.
    newly_joined_users: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.sync_filter is None:
            self.sync_filter = parse_sync_filter(self.filter)

    @property
    def filters(self) -> SyncFilter:
        """The request's filter, parsed: how every section matches its events."""
        assert self.sync_filter is not None  # set in __post_init__
        return self.sync_filter


class SyncExtension(Protocol):
    # The key of this stream's position in the sync token ("typing", "receipts",
    # "account_data", "presence", "to_device", "device_lists", ...).
    stream_name: str

    def current_position(self) -> int:
        """The stream's current position (upper bound of what can be read now)."""
        ...

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        """Write this stream's changes in (since, upto] into `response`.

        Global sections go at their top-level key (`to_device`, `device_lists`,
        `presence`, `account_data`, `device_one_time_keys_count`, ...). Per-room parts go
        under `response["rooms"]["join"][room_id]` (e.g. `ephemeral`, `account_data`);
        create the room's dict with `response["rooms"]["join"].setdefault(room_id, {})`
        only for rooms in ctx.joined_rooms. Return True if anything was added that
        should end a long-poll (the response is not empty).
        """
        ...
