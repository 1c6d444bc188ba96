"""The local event sender: what every event this server's users send goes through.

Under the room's lock (rooms.locks): transaction-ID idempotency, the forward extremities
become prev_events, the state before the event is the state after them (the state
calculator resolves it when the DAG has forked), auth events are chosen from that state,
the client API's own checks run, the event is hashed, signed and checked against the auth
rules, and the persister stores it (DESIGN §6: the same persister every federation path
ends in). Also the read side callers use for state: current state and state at events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starling.errors import MatrixError, invalid_param
from starling.protocol.auth_rules import check_auth_rules
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import RoomVersion
from starling.rooms.builder import EventBuilder, auth_keys_for, listed_auth_events
from starling.rooms.locks import RoomLocks
from starling.rooms.persister import (
    EventContext,
    EventPersister,
    NewEventListener,
    StateDeltaListener,
)
from starling.rooms.state_calculator import (
    EMPTY_STATE,
    MissingStateError,
    StateCalculator,
    StateSnapshot,
)
from starling.storage.database import UniqueViolation
from starling.storage.events import EventStore
from starling.storage.state import StateStore

logger = logging.getLogger(__name__)

# The spec allows at most 20 prev_events; a wider fork is merged over several events.
MAX_PREV_EVENTS = 20
# Room IDs tried before giving up when concurrent creations collide (see create_room_event).
MAX_CREATE_ATTEMPTS = 32

__all__ = ["MAX_PREV_EVENTS", "RoomEventService", "StateSnapshot", "user_power"]


class RoomEventService:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        builder: EventBuilder,
        calculator: StateCalculator,
        persister: EventPersister,
        locks: RoomLocks,
    ) -> None:
        self._events = events
        self._state = state
        self._builder = builder
        self._calculator = calculator
        self._persister = persister
        self._locks = locks
        # The last origin_server_ts given to a create event (see create_room_event).
        self._last_create_ts = 0

    def add_listener(
        self, listener: NewEventListener, *, writer_only: bool = False, first: bool = False
    ) -> None:
        """Called (after commit, on the loop) with each new timeline event and its position
        (`writer_only`: only on the process that persisted it; `first`: before the others;
        see EventPersister)."""
        self._persister.add_listener(listener, writer_only=writer_only, first=first)

    def add_state_listener(self, listener: StateDeltaListener) -> None:
        """Called (after commit) with each change of a room's current state."""
        self._persister.add_state_listener(listener)

    @property
    def current_position(self) -> int:
        return self._persister.current_position

    @asynccontextmanager
    async def room_lock(self, room_id: str) -> AsyncIterator[None]:
        """Serialise writes to one room; other rooms proceed in parallel."""
        async with self._locks.lock(room_id):
            yield

    # --- state ---------------------------------------------------------------------------

    async def state_after_events(
        self, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> StateSnapshot:
        """The state after the given events, resolved if they disagree."""
        try:
            return await self._calculator.state_after_events(room_id, room_version, event_ids)
        except MissingStateError as e:
            raise MatrixError(500, "M_UNKNOWN", f"Cannot compute room state: {e}") from None

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        """State resolution with the events it needs loaded from the store."""
        try:
            return await self._calculator.resolve(room_version, state_sets)
        except MissingStateError as e:
            raise MatrixError(500, "M_UNKNOWN", f"Cannot resolve room state: {e}") from None

    async def get_event(self, event_id: str) -> Event | None:
        """A stored event (rejected ones too), or None."""
        stored = await self._events.get_event(event_id)
        return None if stored is None else stored.event

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
        countersign: Callable[[Event], Awaitable[Event]] | None = None,
        before_persist: Callable[[Event], Awaitable[None]] | None = None,
    ) -> Event:
        """Create, authorise and persist one event in an existing room.

        `countersign` gets the authorised event before it is persisted and returns it
        with another server's signature added (an invite of that server's user, which
        that server signs first: server-server API "Inviting to a room").

        `check` runs under the room lock against the current state, before the event is
        built, for rules that are the client API's rather than the auth rules' (e.g. a
        redaction needs the redact level). Raises MatrixError.

        `before_persist` runs with the authorised event, still under the room lock, before
        it is stored: work that must name the event's ID before it exists in the room (a
        room upgrade's new room points at the tombstone, as Synapse builds it first).
        """
        async with self.room_lock(room_id):
            room_version = await self._events.get_room_version(room_id)
            if room_version is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
            if txn_id is None or device_id is None:
                return await self._send_locked(
                    room_id, room_version, sender, event_type, content, state_key,
                    device_id, txn_id, redacts, check, countersign, before_persist,
                )  # fmt: skip
            # A transaction ID is scoped to the device and the request: the same ID in
            # another room is another message. New IDs are the rule and a unique index
            # refuses a second event with one, so the stored ID is looked up only when
            # the send fails: a retry then answers the first event, even if the sender
            # could no longer send it now.
            try:
                return await self._send_locked(
                    room_id, room_version, sender, event_type, content, state_key,
                    device_id, txn_id, redacts, check, countersign, before_persist,
                )  # fmt: skip
            except (MatrixError, UniqueViolation):
                existing = await self._events.get_event_by_txn(sender, device_id, room_id, txn_id)
                got = await self._events.get_event(existing) if existing is not None else None
                if got is None:
                    raise
                if got.event.type != event_type or got.event.redacts != redacts:
                    raise invalid_param(
                        "Transaction ID already used for another request in this room"
                    ) from None
                return got.event

    async def _send_locked(
        self,
        room_id: str,
        room_version: RoomVersion,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        device_id: str | None,
        txn_id: str | None,
        redacts: str | None,
        check: Callable[[Mapping[StateKey, Event], RoomVersion], Awaitable[None]] | None,
        countersign: Callable[[Event], Awaitable[Event]] | None,
        before_persist: Callable[[Event], Awaitable[None]] | None = None,
    ) -> Event:
        """`send`'s work, under the room lock."""
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
        if countersign is not None:
            event = await countersign(event)
        if before_persist is not None:
            await before_persist(event)
        await self._persister.persist(
            event, EventContext(before), device_id=device_id, txn_id=txn_id, fresh=True
        )
        return event

    def _next_create_event(
        self, room_version: RoomVersion, room_id: str | None, sender: str, content: dict[str, Any]
    ) -> Event:
        """One attempt's m.room.create event, authorised: it takes the next unused
        millisecond of this process (see `create_room_event`)."""
        ts = max(self._builder.now(), self._last_create_ts + 1)
        self._last_create_ts = ts
        event = self._builder.build(
            room_version=room_version,
            room_id=room_id,
            event_type="m.room.create",
            sender=sender,
            content=content,
            state_key="",
            prev_events=[],
            auth_events=[],
            origin_server_ts=ts,
        )
        decision = check_auth_rules(event, {})
        if not decision.allowed:
            raise MatrixError(400, "M_BAD_JSON", f"Invalid create event: {decision.reason}")
        return event

    async def create_room_event(
        self, room_version: RoomVersion, room_id: str | None, sender: str, content: dict[str, Any]
    ) -> Event:
        """Build and persist a room's m.room.create event; the room exists afterwards.

        Where the room ID is the create event's hash (room version 12), two creations by
        one user with the same content in one millisecond would be the same room: a taken
        ID is retried with a later origin_server_ts (as Synapse does), so every creation
        makes its own room. Each attempt takes the next unused millisecond of this
        process (`_last_create_ts`), so concurrent creations start on different candidates
        instead of all walking the same sequence (50 at once used to exhaust the attempts).
        """
        for _ in range(MAX_CREATE_ATTEMPTS):
            event = self._next_create_event(room_version, room_id, sender, content)
            async with self.room_lock(event.room_id):
                if await self._events.get_room_version(event.room_id) is not None:
                    continue
                try:
                    await self._persister.persist(
                        event, EventContext(EMPTY_STATE), new_room=room_version, fresh=True
                    )
                except UniqueViolation:
                    continue  # another process took this ID in the meantime
            return event
        raise MatrixError(409, "M_UNKNOWN", "Could not pick a free room ID; retry")

    async def create_room(
        self,
        room_version: RoomVersion,
        room_id: str | None,
        sender: str,
        content: dict[str, Any],
        initial: Sequence[tuple[str, dict[str, Any], str]],
    ) -> list[Event]:
        """Build a new room's create event and, each on top of the one before, the
        `initial` state events (type, content, state key) sent by `sender`; authorise
        each against the state before it and persist them all in one transaction.
        Returns the events, create event first. The room ID is picked as in
        `create_room_event`. If an initial event is refused by the auth rules, the events
        before it are persisted and the refusal (403) raised, as separate sends would."""
        for _ in range(MAX_CREATE_ATTEMPTS):
            create = self._next_create_event(room_version, room_id, sender, content)
            async with self.room_lock(create.room_id):
                if await self._events.get_room_version(create.room_id) is not None:
                    continue
                chain = [create]
                state: dict[StateKey, Event] = {create.state_map_key: create}
                refusal: MatrixError | None = None
                for event_type, event_content, state_key in initial:
                    keys = auth_keys_for(event_type, state_key, sender, event_content, room_version)
                    auth_state = {k: state[k] for k in keys if k in state}
                    event = self._builder.build(
                        room_version=room_version,
                        room_id=create.room_id,
                        event_type=event_type,
                        sender=sender,
                        content=event_content,
                        state_key=state_key,
                        prev_events=[chain[-1]],
                        auth_events=listed_auth_events(auth_state, room_version),
                    )
                    decision = check_auth_rules(event, auth_state)
                    if not decision.allowed:
                        refusal = MatrixError(403, "M_FORBIDDEN", decision.reason)
                        break
                    chain.append(event)
                    state[event.state_map_key] = event
                try:
                    await self._persister.persist_new_room(chain, room_version)
                except UniqueViolation:
                    continue  # another process took this ID in the meantime
            if refusal is not None:
                raise refusal
            return chain
        raise MatrixError(409, "M_UNKNOWN", "Could not pick a free room ID; retry")

    async def _load_state(
        self, state: Mapping[StateKey, str], keys: Sequence[StateKey]
    ) -> dict[StateKey, Event]:
        ids = {k: state[k] for k in keys if k in state}
        events = await self._events.get_events(ids.values())
        return {k: events[eid] for k, eid in ids.items() if eid in events}


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
