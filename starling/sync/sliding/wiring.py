"""Builds the sliding sync service from its collaborators and stores (called by
starling.app, which opens the stores)."""

from __future__ import annotations

from starling.notifier import Notifier
from starling.rooms.client_format import EventFormatter
from starling.rooms.event_service import RoomEventService
from starling.rooms.visibility import HistoryVisibility
from starling.storage.account_data import AccountDataStore
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.sliding_connections import SlidingConnectionStore
from starling.storage.sliding_sync import SlidingSyncStore
from starling.storage.state import StateStore
from starling.sync.lazy_members import LazyMemberCache
from starling.sync.room_sync import RoomSyncBuilder
from starling.sync.service import SyncService
from starling.sync.sliding.connections import ConnectionStore
from starling.sync.sliding.extensions import KeyCounts, SlidingExtensions
from starling.sync.sliding.room_list import RoomActivity, RoomLister, RoomMetaCache
from starling.sync.sliding.rooms import RoomResultBuilder, UnreadLookup
from starling.sync.sliding.service import IgnoredLookup, SlidingSyncService
from starling.sync.sliding.threads import ThreadUpdates


def build_sliding_sync(
    store: SlidingSyncStore,
    connection_store: SlidingConnectionStore,
    event_store: EventStore,
    state_store: StateStore,
    membership_store: MembershipStore,
    account_data_store: AccountDataStore,
    room_events: RoomEventService,
    notifier: Notifier,
    sync: SyncService,
    formatter: EventFormatter,
    ignored_users: IgnoredLookup,
    key_counts: KeyCounts,
    unread_counts: UnreadLookup,
    *,
    visibility: HistoryVisibility,
) -> SlidingSyncService:
    """Call after every /sync extension is registered: sliding sync serves the same ones."""
    activity = RoomActivity(store, room_events.current_position)
    room_events.add_listener(activity.on_new_event)
    room_events.add_state_listener(activity.on_state_change)
    meta = RoomMetaCache(store, event_store)
    room_events.add_state_listener(meta.on_state_change)
    builder = RoomResultBuilder(
        event_store,
        state_store,
        membership_store,
        visibility,
        formatter,
        RoomSyncBuilder(
            event_store, state_store, membership_store, visibility, formatter, LazyMemberCache()
        ),
        activity.state_changed_after,
        store,
    )
    builder.use_unread_counts(unread_counts)
    return SlidingSyncService(
        sync=sync,
        notifier=notifier,
        memberships=membership_store,
        lister=RoomLister(membership_store, event_store, store, account_data_store, activity, meta),
        builder=builder,
        extensions=SlidingExtensions({ext.stream_name: ext for ext in sync.extensions}, key_counts),
        activity=activity,
        ignored_users=ignored_users,
        connections=ConnectionStore(connection_store),
        threads=ThreadUpdates(
            store,
            event_store,
            formatter,
            visibility.filter_events,
            membership_store.get_joined_rooms,
        ),
    )
