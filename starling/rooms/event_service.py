"""The path every local event takes: build, authorise, persist, notify (DESIGN §6).

Under the room's lock: the forward extremities become prev_events, the state before the
event is the state after them (resolved when the DAG has forked), auth events are chosen
from that state, the event is hashed, signed and checked against the auth rules, then
written with its stream position, state group, extremities, current state and membership
changes in one transaction. Waiters are woken after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starling.errors import MatrixError, invalid_param
from starling.protocol.auth_rules import check_auth_rules
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import RoomVersion
from starling.protocol.state_res import MissingEventsError, resolve_state
from starling.rooms.builder import EventBuilder, auth_keys_for, listed_auth_events
from starling.storage.database import Database, UniqueViolation
from starling.storage.events import EventStore
from starling.storage.memberships import Membership, MembershipStore
from starling.storage.relations import RelationStore
from starling.storage.search import SearchStore
from starling.storage.state import StateStore
from starling.storage.streams import StreamIdGenerator

logger = logging.getLogger(__name__)

# The spec allows at most 20 prev_events; a wider fork is merged over several events.
MAX_PREV_EVENTS = 20
# Rounds of fetching missing events for a state resolution before giving up.
MAX_RESOLVE_ROUNDS = 50
# Room IDs tried before giving up when concurrent creations collide (see create_room_event).
MAX_CREATE_ATTEMPTS = 32

NewEventListener = Callable[[Event, int], None]


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """The state at a point of the DAG: the map, and the stored group holding it (if any)."""

    ids: Mapping[StateKey, str]
    group: int | None


class RoomEventService:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        events_stream: StreamIdGenerator,
        builder: EventBuilder,
        relations: RelationStore | None = None,
        search: SearchStore | None = None,
    ) -> None:
        self._db = db
        self._events = events
        self._state = state
        self._memberships = memberships
        self._stream = events_stream
        self._builder = builder
        self._relations = relations if relations is not None else RelationStore(db)
        self._search = search if search is not None else SearchStore(db)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._listeners: list[NewEventListener] = []

    def add_listener(self, listener: NewEventListener) -> None:
        """Called (after commit, on the loop) with each new timeline event and its position."""
        self._listeners.append(listener)

    @property
    def current_position(self) -> int:
        return self._stream.current_position()

    @asynccontextmanager
    async def room_lock(self, room_id: str) -> AsyncIterator[None]:
        """Serialise writes to one room; other rooms proceed in parallel."""
        lock = self._locks.get(room_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[room_id] = lock
        async with lock:
            yield

    # --- state ---------------------------------------------------------------------------

    async def state_after_events(
        self, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> StateSnapshot:
        """The state after the given events, resolved if they disagree."""
        if not event_ids:
            return StateSnapshot({}, None)
        metas = await self._events.get_events_with_meta(event_ids)
        groups = sorted({m.state_after for _, m in metas.values() if m.state_after is not None})
        if not groups:
            return StateSnapshot({}, None)
        if len(groups) == 1:
            return StateSnapshot(await self._state.get_state_ids(groups[0]), groups[0])
        state_sets = [await self._state.get_state_ids(g) for g in groups]
        resolved = await self.resolve(room_version, state_sets)
        return StateSnapshot(resolved, None)

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        """State resolution with the events it needs loaded from the store."""
        wanted = {eid for s in state_sets for eid in s.values()}
        loaded: dict[str, Event] = {}
        for _ in range(MAX_RESOLVE_ROUNDS):
            loaded.update(await self._events.get_events(wanted - loaded.keys(), True))
            try:
                return resolve_state(room_version, state_sets, loaded)
            except MissingEventsError as e:
                missing = set(e.event_ids) - loaded.keys()
                if not missing or not missing - wanted:
                    raise MatrixError(
                        500, "M_UNKNOWN", "Cannot resolve room state: events are missing"
                    ) from None
                wanted |= missing
        raise MatrixError(500, "M_UNKNOWN", "Cannot resolve room state: auth chain too deep")

    async def current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        return await self._state.get_current_state_ids(room_id)

    async def current_state_events(
        self, room_id: str, keys: Sequence[StateKey] | None = None
    ) -> dict[StateKey, Event]:
        ids = await self._state.get_current_state_ids(room_id)
        wanted = ids if keys is None else {k: ids[k] for k in keys if k in ids}
        events = await self._events.get_events(wanted.values())
        return {k: events[eid] for k, eid in wanted.items() if eid in events}

    # --- sending -------------------------------------------------------------------------

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        device_id: str | None = None,
        txn_id: str | None = None,
        redacts: str | None = None,
        check: Callable[[Mapping[StateKey, Event], RoomVersion], Awaitable[None]] | None = None,
    ) -> Event:
        """Create, authorise and persist one event in an existing room.

        `check` runs under the room lock against the current state, before the event is
        built, for rules that are the client API's rather than the auth rules' (e.g. a
        redaction needs the redact level). Raises MatrixError.
        """
        async with self.room_lock(room_id):
            room_version = await self._events.get_room_version(room_id)
            if room_version is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
            if txn_id is not None and device_id is not None:
                # A transaction ID is scoped to the device and the request: the same ID
                # in another room is another message.
                existing = await self._events.get_event_by_txn(sender, device_id, room_id, txn_id)
                if existing is not None:
                    got = await self._events.get_event(existing)
                    if got is not None:
                        if got[0].type != event_type or got[0].redacts != redacts:
                            raise invalid_param(
                                "Transaction ID already used for another request in this room"
                            )
                        return got[0]
            extremities = await self._events.get_forward_extremities(room_id)
            prev = await self._events.get_events(extremities, allow_rejected=True)
            prev_events = sorted(prev.values(), key=lambda e: (-e.depth, e.event_id))
            prev_events = prev_events[:MAX_PREV_EVENTS]
            before = await self.state_after_events(
                room_id, room_version, [e.event_id for e in prev_events]
            )
            keys = auth_keys_for(event_type, state_key, sender, content, room_version)
            if check is not None:
                keys = [*keys, ("m.room.power_levels", "")]
            auth_state = await self._load_state(before.ids, keys)
            if check is not None:
                await check(auth_state, room_version)
            event = self._builder.build(
                room_version=room_version,
                room_id=room_id,
                event_type=event_type,
                sender=sender,
                content=content,
                state_key=state_key,
                prev_events=prev_events,
                auth_events=listed_auth_events(auth_state, room_version),
                redacts=redacts,
            )
            decision = check_auth_rules(event, auth_state)
            if not decision.allowed:
                raise MatrixError(403, "M_FORBIDDEN", decision.reason)
            # A message on top of the room's only extremity changes no state: the current
            # state is already the state after that extremity (persisted with it).
            await self._persist(
                event,
                before,
                device_id=device_id,
                txn_id=txn_id,
                keeps_current_state=(
                    state_key is None and len(extremities) == 1 and before.group is not None
                ),
            )
            return event

    async def create_room_event(
        self, room_version: RoomVersion, room_id: str | None, sender: str, content: dict[str, Any]
    ) -> Event:
        """Build and persist a room's m.room.create event; the room exists afterwards.

        Where the room ID is the create event's hash (room version 12), two creations by
        one user with the same content in one millisecond would be the same room: a taken
        ID is retried with a later origin_server_ts (as Synapse does), so every creation
        makes its own room.
        """
        ts = self._builder.now()
        for attempt in range(MAX_CREATE_ATTEMPTS):
            event = self._builder.build(
                room_version=room_version,
                room_id=room_id,
                event_type="m.room.create",
                sender=sender,
                content=content,
                state_key="",
                prev_events=[],
                auth_events=[],
                origin_server_ts=ts + attempt,
            )
            decision = check_auth_rules(event, {})
            if not decision.allowed:
                raise MatrixError(400, "M_BAD_JSON", f"Invalid create event: {decision.reason}")
            async with self.room_lock(event.room_id):
                if await self._events.get_room_version(event.room_id) is not None:
                    continue
                try:
                    await self._persist(event, StateSnapshot({}, None), new_room=room_version)
                except UniqueViolation:
                    continue  # another process took this ID in the meantime
            return event
        raise MatrixError(409, "M_UNKNOWN", "Could not pick a free room ID; retry")

    async def _load_state(
        self, state: Mapping[StateKey, str], keys: Sequence[StateKey]
    ) -> dict[StateKey, Event]:
        ids = {k: state[k] for k in keys if k in state}
        events = await self._events.get_events(ids.values())
        return {k: events[eid] for k, eid in ids.items() if eid in events}

    async def _persist(
        self,
        event: Event,
        before: StateSnapshot,
        *,
        device_id: str | None = None,
        txn_id: str | None = None,
        new_room: RoomVersion | None = None,
        keeps_current_state: bool = False,
    ) -> int:
        room_id = event.room_id
        is_state = event.state_key is not None
        after_ids: Mapping[StateKey, str] = before.ids
        replaces = None
        changed: dict[StateKey, str] = {}
        if is_state:
            replaces = before.ids.get(event.state_map_key)
            after_ids = {**before.ids, event.state_map_key: event.event_id}
        if not keeps_current_state:
            # Copying and comparing the whole state is only needed when it may change.
            current = await self._state.get_current_state_ids(room_id)
            changed = {k: v for k, v in after_ids.items() if current.get(k) != v}
        needed_nids = set(changed.values()) - {event.event_id}
        if before.group is None and before.ids:
            needed_nids |= set(before.ids.values())
        nids = await self._events.nids_for_event_ids(list(needed_nids))
        member_events = await self._events.get_events(
            [eid for (t, _), eid in changed.items() if t == "m.room.member"]
        )
        member_events[event.event_id] = event
        redaction_target = event.redacts if event.type == "m.room.redaction" else None

        async with self._db.transaction() as txn:
            if new_room is not None:
                await self._events.store_room(
                    txn, room_id, new_room, event.sender, event.origin_server_ts
                )
            position = await self._stream.next_id(txn)
            group_before = before.group
            if group_before is None and before.ids:
                group_before = await self._state.create_group(
                    txn, room_id, None, before.ids, before.ids, nids
                )
            nid = await self._events.insert_event(
                txn,
                event,
                stream_ordering=position,
                state_before=group_before,
                state_after=group_before,
                replaces_state=replaces,
                device_id=device_id,
                txn_id=txn_id,
            )
            nids[event.event_id] = nid
            await self._relations.record(txn, event, position)
            await self._search.record(txn, event, position)
            group_after = group_before
            if is_state:
                group_after = await self._state.create_group(
                    txn,
                    room_id,
                    group_before,
                    {event.state_map_key: event.event_id},
                    after_ids,
                    nids,
                )
                await txn.execute(
                    "UPDATE events SET state_after = ? WHERE event_nid = ?", group_after, nid
                )
                # The cached meta was built with state_after = before; refresh it.
                txn.call_after_commit(lambda: self._events.invalidate(event.event_id))
            await self._events.set_forward_extremities(
                txn, room_id, event.prev_event_ids, event.event_id
            )
            if not keeps_current_state:
                await self._state.update_current_state(txn, room_id, after_ids, changed, nids)
            memberships = []
            for (etype, user_id), eid in changed.items():
                if etype != "m.room.member":
                    continue
                member_event = member_events.get(eid)
                if member_event is None or member_event.membership is None:
                    continue
                memberships.append(
                    Membership(
                        room_id,
                        user_id,
                        member_event.membership,
                        eid,
                        position if eid == event.event_id else None,
                    )
                )
            await self._memberships.record(txn, memberships)
            if redaction_target is not None:
                await self._events.mark_redacted(txn, redaction_target, event.event_id)
                await self._relations.on_redacted(txn, redaction_target, room_id)
                await self._search.on_redacted(txn, redaction_target)
            txn.call_after_commit(lambda: self._notify(event, position))
        return position

    def _notify(self, event: Event, position: int) -> None:
        for listener in self._listeners:
            try:
                listener(event, position)
            except Exception:
                logger.exception("new-event listener failed for %s", event.event_id)


def user_power(auth_state: Mapping[StateKey, Event], user_id: str) -> int | float:
    """A user's power level in the given state."""
    pl = PowerLevels.from_state(
        auth_state.get(("m.room.create", "")),
        auth_state.get(("m.room.power_levels", "")),
        _room_version_of(auth_state),
    )
    return pl.user_level(user_id)


def _room_version_of(state: Mapping[StateKey, Event]) -> RoomVersion:
    create = state.get(("m.room.create", ""))
    if create is None:
        raise MatrixError(500, "M_UNKNOWN", "room has no create event")
    return create.room_version
