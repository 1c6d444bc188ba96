"""The writes of the one persister (starling.rooms.persister), each in one transaction.

The persister decides — the state before and after an event, which extremities it
replaces, the room's new current state, whether a redaction applies — and hands the
decision to one of these methods, which writes every table it touches (events, state
groups, extremities, current state and its delta stream, memberships, relations, search,
redactions) and allocates the stream position inside that transaction: a reader never
sees an event without its state, nor a position without its rows. A method that raises
has committed nothing. The persister tells its listeners once the method has returned;
what other processes must hear of a write (`on_commit`) is said in the commit's own
callbacks, beside the stream position's publication (storage/streams.py), so that news
never trails the position it explains.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import RoomVersion
from starling.storage.database import Database, Transaction
from starling.storage.events import EventStore
from starling.storage.memberships import Membership, MembershipStore
from starling.storage.relations import RelationStore
from starling.storage.search import SearchStore
from starling.storage.state import StateStore
from starling.storage.streams import StreamIdGenerator

# (user_id, membership, event_id): a member event now in the room's current state.
MemberRow = tuple[str, str, str]
# Called with a write's stream position once its transaction commits, synchronously
# among the commit's callbacks (see the module docstring).
OnCommit = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class CurrentStateChange:
    """The room's current state moves from `previous` to `new`; `changed` is every key
    whose event differs (None: the key left the state). `members` are the member events
    among the changes, `members_gone` the users whose key left."""

    previous: Mapping[StateKey, str]
    new: Mapping[StateKey, str]
    changed: Mapping[StateKey, str | None]
    members: Sequence[MemberRow]
    members_gone: Sequence[str]


@dataclass(frozen=True, slots=True)
class TimelineWrite:
    """What the persister decided about one event that gets a stream position."""

    event: Event
    # Record the room first (its first timeline event here, or a new room).
    new_room: RoomVersion | None
    backfilled: bool
    # The event is stored as an outlier: promote it instead of inserting it.
    promote_outlier: bool
    # The state before the event: its group, or (None) the IDs to store a group of.
    state_before_group: int | None
    state_before_ids: Mapping[StateKey, str]
    # The state after the event when it changes state (a state event not rejected).
    state_after_ids: Mapping[StateKey, str] | None
    replaces_state: str | None
    rejected_reason: str | None
    soft_failed: bool
    device_id: str | None
    txn_id: str | None
    # Event ID -> nid of every event a new state group or the current state refers to.
    nids: Mapping[str, int]
    becomes_extremity: bool
    replaced_extremities: Sequence[str]
    # Prev events not stored (new backward extremities); whether the event filled a gap.
    missing_prevs: Sequence[str]
    fills_gap: bool
    current_state: CurrentStateChange | None
    redaction_target: str | None
    # Built here just now (a local event): nothing can relate to it yet.
    fresh: bool = False

    @property
    def accepted(self) -> bool:
        return self.rejected_reason is None and not self.soft_failed


class EventWrites:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        events_stream: StreamIdGenerator,
        backfill_stream: StreamIdGenerator,
        relations: RelationStore,
        search: SearchStore,
    ) -> None:
        self._db = db
        self._events = events
        self._state = state
        self._memberships = memberships
        self._stream = events_stream
        self._backfill_stream = backfill_stream
        self._relations = relations
        self._search = search

    def current_position(self) -> int:
        """The events stream's position (every event up to it is persisted)."""
        return self._stream.current_position()

    async def store_outliers(
        self,
        new_rooms: Mapping[str, Event],
        room_version: RoomVersion,
        events: Sequence[Event],
        rejected: Mapping[str, str],
    ) -> None:
        """Store events known only as auth or state; `new_rooms` maps rooms not recorded
        yet to their first event (the create event when there is one)."""
        async with self._db.transaction() as txn:
            for room_id, first in sorted(new_rooms.items()):
                await self._events.store_room(
                    txn, room_id, room_version, first.sender, first.origin_server_ts
                )
            await self._events.insert_outliers(txn, events, rejected)

    async def store_out_of_band_membership(
        self,
        event: Event,
        *,
        new_room: bool,
        promote_outlier: bool,
        previous_event_id: str | None,
        on_commit: OnCommit | None = None,
    ) -> int:
        """A member event stored as an outlier with a stream position, recorded as the
        user's membership and in the current-state-delta stream (after
        `previous_event_id`), not in the room's current state. Returns the position."""
        if event.state_key is None or event.membership is None:
            raise ValueError(f"{event.event_id} is not a member event")
        room_id, user_id = event.room_id, event.state_key
        async with self._db.transaction() as txn:
            if new_room:
                await self._events.store_room(
                    txn, room_id, event.room_version, event.sender, event.origin_server_ts
                )
            position = await self._stream.next_id(txn)
            if promote_outlier:
                await self._events.set_outlier_position(txn, event.event_id, position)
            else:
                await self._events.insert_event(
                    txn,
                    event,
                    stream_ordering=position,
                    state_before=None,
                    state_after=None,
                    outlier=True,
                )
            await self._state.record_state_delta(
                txn,
                room_id,
                ("m.room.member", user_id),
                event.event_id,
                previous_event_id,
                position,
            )
            await self._memberships.record(
                txn, [Membership(room_id, user_id, event.membership, event.event_id, position)]
            )
            if on_commit is not None:
                txn.call_after_commit(functools.partial(on_commit, position))
        return position

    async def store_timeline_event(
        self, write: TimelineWrite, on_commit: OnCommit | None = None
    ) -> int:
        """Store the event as `write` says; returns its stream position (negative for a
        backfilled event)."""
        await self._state.intern_keys(_state_keys(write))
        async with self._db.transaction() as txn:
            position, _ = await self._store_timeline_event(txn, write, write.state_before_group)
            if on_commit is not None:
                txn.call_after_commit(functools.partial(on_commit, position))
        return position

    async def store_new_room_events(
        self,
        writes: Sequence[TimelineWrite],
        on_commit_all: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """A new room's first events, each the only successor of the one before, in ONE
        transaction (createRoom): the state before each event after the first is the
        group after the one before (created in this transaction). Returns the positions,
        which `on_commit_all` is also called with."""
        positions: list[int] = []
        await self._state.intern_keys(k for write in writes for k in _state_keys(write))
        async with self._db.transaction() as txn:
            group: int | None = None
            for i, write in enumerate(writes):
                position, group = await self._store_timeline_event(
                    txn, write, write.state_before_group if i == 0 else group
                )
                positions.append(position)
            if on_commit_all is not None:
                txn.call_after_commit(functools.partial(on_commit_all, positions))
        return positions

    async def _store_timeline_event(
        self, txn: Transaction, write: TimelineWrite, group_before: int | None
    ) -> tuple[int, int | None]:
        """One event's rows in `txn`; returns its position and the state group after it."""
        event, room_id = write.event, write.event.room_id
        nids = dict(write.nids)
        if write.new_room is not None:
            await self._events.store_room(
                txn, room_id, write.new_room, event.sender, event.origin_server_ts
            )
        if write.backfilled:
            position = -(await self._backfill_stream.next_id(txn))
        else:
            position = await self._stream.next_id(txn)
        if group_before is None and write.state_before_ids:
            before = write.state_before_ids
            group_before = await self._state.create_group(txn, room_id, None, before, before, nids)
        if write.promote_outlier:
            nid = await self._events.promote_outlier(
                txn,
                event,
                stream_ordering=position,
                state_before=group_before,
                state_after=group_before,
                replaces_state=write.replaces_state,
                rejected_reason=write.rejected_reason,
                soft_failed=write.soft_failed,
            )
        else:
            nid = await self._events.insert_event(
                txn,
                event,
                stream_ordering=position,
                state_before=group_before,
                state_after=group_before,
                replaces_state=write.replaces_state,
                rejected_reason=write.rejected_reason,
                soft_failed=write.soft_failed,
                device_id=write.device_id,
                txn_id=write.txn_id,
            )
        nids[event.event_id] = nid
        if write.accepted:
            await self._relations.record(txn, event, position)
            if write.fresh:
                self._relations.note_new_parent(txn, event.event_id)
            await self._search.record(txn, event, position)
        state_after = group_before
        if write.state_after_ids is not None:
            assert event.state_key is not None
            state_after = await self._state.create_group(
                txn,
                room_id,
                group_before,
                {event.state_map_key: event.event_id},
                write.state_after_ids,
                nids,
            )
            await self._events.set_state_after(txn, event.event_id, nid, state_after)
        if write.becomes_extremity or write.replaced_extremities:
            await self._events.set_forward_extremities(
                txn,
                room_id,
                write.replaced_extremities,
                event.event_id if write.becomes_extremity else None,
            )
        if write.missing_prevs or write.fills_gap:
            await self._events.update_backward_extremities(
                txn, room_id, write.missing_prevs, [event.event_id] if write.fills_gap else []
            )
        if write.current_state is not None:
            await self._update_current_state(txn, room_id, write.current_state, nids, position)
        if write.redaction_target is not None:
            await self._events.mark_redacted(txn, write.redaction_target, event.event_id)
            await self._relations.on_redacted(txn, write.redaction_target, room_id)
            await self._search.on_redacted(txn, write.redaction_target)
        if write.accepted and not write.backfilled and state_after is not None:
            self._events.record_state_tip(txn, room_id, position, state_after)
        return position, state_after

    async def _update_current_state(
        self,
        txn: Transaction,
        room_id: str,
        change: CurrentStateChange,
        nids: Mapping[str, int],
        position: int,
    ) -> None:
        await self._state.update_current_state(
            txn,
            room_id,
            change.new,
            change.changed,
            nids,
            previous=change.previous,
            position=position,
        )
        await self._memberships.record(
            txn,
            [
                Membership(room_id, user_id, membership, event_id, position)
                for user_id, membership, event_id in change.members
            ],
        )
        await self._memberships.remove(txn, room_id, change.members_gone)


def _state_keys(write: TimelineWrite) -> set[StateKey]:
    """The (type, state_key) pairs `write` stores rows for, but for those of a full
    snapshot replacing a long chain (all known already, but after a restart)."""
    keys: set[StateKey] = set()
    if write.state_before_group is None:
        keys.update(write.state_before_ids)
    if write.state_after_ids is not None:
        keys.add(write.event.state_map_key)
    if write.current_state is not None:
        keys.update(write.current_state.changed)
    return keys
