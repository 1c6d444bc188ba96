"""Builds the sync area's services from their collaborators (called by starling.app)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starling.notifier import Notifier
from starling.rooms.client_format import EventFormatter
from starling.rooms.event_service import RoomEventService
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore
from starling.storage.filters import FilterStore
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore
from starling.sync.history import RoomHistory
from starling.sync.lazy_members import LazyMemberCache
from starling.sync.room_sync import RoomSyncBuilder
from starling.sync.service import SyncService


@dataclass
class SyncServices:
    sync: SyncService
    room_history: RoomHistory
    filter_store: FilterStore
    # The formatter every read path uses (bundled aggregations plug into it).
    formatter: EventFormatter


def build_sync(
    filter_store: FilterStore,
    event_store: EventStore,
    state_store: StateStore,
    membership_store: MembershipStore,
    room_events: RoomEventService,
    notifier: Notifier,
    backfill: Callable[[str], Awaitable[bool]] | None = None,
    *,
    visibility: HistoryVisibility,
) -> SyncServices:
    """`backfill(room_id)` fetches older history from other servers for /messages."""
    formatter = EventFormatter(event_store)
    rooms = RoomSyncBuilder(
        event_store, state_store, membership_store, visibility, formatter, LazyMemberCache()
    )
    return SyncServices(
        sync=SyncService(room_events, membership_store, notifier, rooms),
        room_history=RoomHistory(
            event_store,
            state_store,
            membership_store,
            visibility,
            formatter,
            lambda: room_events.current_position,
            backfill,
        ),
        filter_store=filter_store,
        formatter=formatter,
    )
