"""The one persister every event ends in (DESIGN §6 "One persister for every event").

Local sends, inbound PDUs, send_join state, backfill and gap-filling all call
`EventPersister.persist(event, context)` (or `persist_outliers` for events known only as
auth or state), holding the room's lock (rooms.locks). The context says what the caller
decided: the state before the event, and whether it was rejected, soft-failed, is an
outlier or was backfilled. From that, and only here, in one transaction:

- stream positions: the events stream for timeline events; a separate counter, negated,
  for backfilled events (older history sorts below everything); none for outliers;
- state groups: the state before the event, and after it (= before plus the event for
  a state event that was not rejected: a rejected event never changes state);
- forward extremities: an accepted event that is not backfilled replaces the extremities
  among its prev events and becomes one itself, unless a stored event that is neither
  rejected nor soft-failed already cites it — a timeline event (it filled a gap) or an
  outlier (a state or auth event of a later point: an old event pulled into the timeline
  is no tip). The room never loses its last extremity that way. Rejected, soft-failed,
  outlier and backfilled events never take part;
- backward extremities: prev events of accepted events that are not stored (or only as
  outliers); an event stops being one when it is stored;
- current state: the resolution of the forward extremities' states (fast path: an event
  on top of every extremity gives its own state after, and a message there changes
  nothing), with every change recorded in the current-state-delta stream and in the
  denormalised memberships — so a membership flipped by state resolution reaches /sync;
- auth edges (`event_auth`), relations, search, redactions of accepted events.

After commit, listeners hear about accepted timeline events (not backfilled ones) and
about current-state changes. With workers (starling/cluster) the `relay` tells the other
processes the same, from the commit's own callbacks (so the news travels with the stream
position, not after it), and they `replay` it to their listeners — except those
registered `writer_only` (listeners that write, which must run once: on the process that
persisted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels, server_of
from starling.protocol.room_versions import RoomVersion
from starling.rooms.state_calculator import StateCalculator, StateSnapshot
from starling.storage.event_writes import (
    CurrentStateChange,
    EventWrites,
    MemberRow,
    TimelineWrite,
)
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore

logger = logging.getLogger(__name__)

NewEventListener = Callable[[Event, int], None]
# (room_id, {key: new event ID or None if the key left the state}, position)
StateDeltaListener = Callable[[str, Mapping[StateKey, str | None], int], None]


class PersistRelay(Protocol):
    """What the persister tells the other processes (starling/cluster), after commit."""

    def room(self, room_id: str) -> None:
        """The room's extremities, state or members may have changed."""

    def event(self, event_id: str, position: int) -> None:
        """A timeline event the listeners heard about."""

    def state(self, room_id: str, changed: Mapping[StateKey, str | None], position: int) -> None:
        """A change of the room's current state."""


@dataclass(frozen=True)
class EventContext:
    """What the caller decided about an event it hands to the persister."""

    state_before: StateSnapshot
    rejected_reason: str | None = None
    soft_failed: bool = False
    outlier: bool = False  # no state known; no stream position
    backfilled: bool = False  # negative stream position; never an extremity

    @property
    def accepted(self) -> bool:
        return self.rejected_reason is None and not self.soft_failed


class EventPersister:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        writes: EventWrites,
        calculator: StateCalculator,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._writes = writes
        self._calculator = calculator
        self._listeners: list[NewEventListener] = []
        self._writer_only: set[NewEventListener] = set()
        self._state_listeners: list[StateDeltaListener] = []
        self.relay: PersistRelay | None = None

    def add_listener(
        self, listener: NewEventListener, *, writer_only: bool = False, first: bool = False
    ) -> None:
        """Called (after commit, on the loop) with each accepted timeline event that is
        not backfilled, and its position. `writer_only`: only on the process that
        persisted the event (with workers), for listeners that write or act once.
        `first`: called before the listeners there are (the long-polls' wake-up, so the
        waiting clients' tasks run before the background senders' on the next turn)."""
        if first:
            self._listeners.insert(0, listener)
        else:
            self._listeners.append(listener)
        if writer_only:
            self._writer_only.add(listener)

    def add_state_listener(self, listener: StateDeltaListener) -> None:
        """Called (after commit) with each change of a room's current state."""
        self._state_listeners.append(listener)

    @property
    def current_position(self) -> int:
        return self._writes.current_position()

    # --- outliers ------------------------------------------------------------------------

    async def persist_outliers(
        self,
        events: Sequence[Event],
        room_version: RoomVersion,
        *,
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        """Store events known only as auth or state (send_join's state and auth chain,
        /event_auth answers), in one transaction. Already stored events are skipped. The
        room is recorded if this server did not know it (a room joined over federation).
        `rejected` maps event IDs to the reason they were rejected."""
        have = await self._events.have_events(e.event_id for e in events)
        new: dict[str, Event] = {}
        for event in events:
            if event.event_id not in have:
                new.setdefault(event.event_id, event)
        if not new:
            return
        unknown_rooms: dict[str, Event] = {}
        for event in new.values():
            if event.room_id in unknown_rooms:
                if event.type == "m.room.create" and event.state_key == "":
                    unknown_rooms[event.room_id] = event
            elif await self._events.get_room_version(event.room_id) is None:
                unknown_rooms[event.room_id] = event
        await self._writes.store_outliers(
            unknown_rooms, room_version, list(new.values()), rejected or {}
        )

    async def persist_out_of_band_membership(self, event: Event) -> int:
        """A member event of a room whose state this server does not have — an invite
        from another server, the rejection of such an invite, a knock or its retraction:
        stored as an outlier but with a stream position, recorded as the user's
        membership and in the current-state-delta stream (not in the room's current
        state), so the user's /sync shows it. The caller holds the room's lock. Returns
        the position (the existing one if the event is already stored)."""
        if event.type != "m.room.member" or event.state_key is None or event.membership is None:
            raise ValueError(f"{event.event_id} is not a member event")
        existing = await self._events.get_event(event.event_id)
        if existing is not None and existing.meta.stream_ordering is not None:
            return existing.meta.stream_ordering
        room_id, user_id = event.room_id, event.state_key
        known_room = await self._events.get_room_version(room_id) is not None
        previous = await self._memberships.get_membership(room_id, user_id)
        key: StateKey = ("m.room.member", user_id)
        changed: Mapping[StateKey, str | None] = {key: event.event_id}
        position = await self._writes.store_out_of_band_membership(
            event,
            new_room=not known_room,
            promote_outlier=existing is not None,
            previous_event_id=previous.event_id if previous is not None else None,
            on_commit=self._tell_others(room_id, None, changed),
        )
        self._call_state_listeners(room_id, changed, position)
        return position

    # --- timeline events -----------------------------------------------------------------

    async def _may_redact(
        self, redaction: Event, target_id: str, state_before: Mapping[StateKey, str]
    ) -> bool:
        """Whether an accepted redaction is applied to its target (spec: Server-Server
        API, "Redactions"; room versions 3 and later leave this to the receiving server):
        the target must be an event of the same room, sent by a user of the redaction
        sender's server, or the sender must hold the redact power level in the state
        before the redaction. A target not here yet is not redacted later."""
        found = await self._events.get_events([target_id], allow_rejected=True)
        target = found.get(target_id)
        if target is None or target.room_id != redaction.room_id:
            return False
        if server_of(target.sender) == server_of(redaction.sender):
            return True
        keys = [("m.room.create", ""), ("m.room.power_levels", "")]
        ids = {k: state_before[k] for k in keys if k in state_before}
        loaded = await self._events.get_events(list(ids.values()))
        create = loaded.get(ids.get(("m.room.create", ""), ""))
        power = loaded.get(ids.get(("m.room.power_levels", ""), ""))
        levels = PowerLevels.from_state(create, power, redaction.room_version)
        return levels.user_level(redaction.sender) >= levels.redact

    async def persist(
        self,
        event: Event,
        context: EventContext,
        *,
        device_id: str | None = None,
        txn_id: str | None = None,
        new_room: RoomVersion | None = None,
        fresh: bool = False,
    ) -> int | None:
        """Store `event` as `context` says; returns its stream position (None for an
        outlier). The caller holds the room's lock. An event already stored as a timeline
        event is left alone (its position is returned); an outlier is promoted. `fresh`:
        the caller has just built the event, so it cannot be stored yet (no look-up)."""
        room_id = event.room_id
        if context.outlier:
            reasons = {event.event_id: context.rejected_reason} if context.rejected_reason else {}
            await self.persist_outliers([event], event.room_version, rejected=reasons)
            return None
        existing = None if fresh else await self._events.get_event(event.event_id)
        if existing is not None and not existing.meta.outlier:
            return existing.meta.stream_ordering
        room_version = new_room
        if room_version is None and await self._events.get_room_version(room_id) is None:
            room_version = event.room_version  # first timeline event of a remote room

        before = context.state_before
        accepted = context.accepted
        is_state = event.state_key is not None
        changes_state = is_state and context.rejected_reason is None
        after_ids: Mapping[StateKey, str] = before.ids
        replaces = None
        if is_state:
            replaces = before.ids.get(event.state_map_key)
            if changes_state:
                after_ids = {**before.ids, event.state_map_key: event.event_id}

        # The graph around the event.
        fills_gap = await self._events.is_backward_extremity(room_id, event.event_id)
        missing_prevs: list[str] = []
        # Prev events of the rejected or soft-failed events this one cites: those never
        # replaced them as extremities, this event does (no tip dangles behind them).
        behind_excluded: set[str] = set()
        if accepted and event.prev_event_ids:
            known = await self._events.get_events_with_meta(event.prev_event_ids)
            missing_prevs = [
                p for p in event.prev_event_ids if p not in known or known[p].meta.outlier
            ]
            for prev_event, prev_meta in known.values():
                if prev_meta.rejected_reason is not None or prev_meta.soft_failed:
                    behind_excluded.update(prev_event.prev_event_ids)
        in_dag = accepted and not context.backfilled
        # A stored event citing this one (a timeline event after a gap, or an outlier: a
        # state or auth event we hold of a later point) means it is not a tip of the DAG.
        cited = fills_gap or (
            in_dag and not fresh and await self._events.is_cited_as_prev_event(event.event_id)
        )
        becomes_extremity = in_dag and not cited
        replaced_extremities: list[str] = []
        previous_state: Mapping[StateKey, str] = {}
        new_state: Mapping[StateKey, str] | None = None
        changed: dict[StateKey, str | None] = {}
        if in_dag:
            extremities = await self._events.get_forward_extremities(room_id)
            prevs = set(event.prev_event_ids) | behind_excluded
            replaced_extremities = [x for x in extremities if x in prevs]
            others = [x for x in extremities if x not in prevs]
            if not becomes_extremity and not others:
                replaced_extremities = []  # never leave the room without a forward extremity
            if becomes_extremity and (changes_state or set(extremities) != prevs):
                # A message on top of every extremity changes no state: the current state
                # is already the state after them, which is the state before this event.
                previous_state = await self._state.get_current_state_ids(room_id)
                new_state = await self._current_state_with(event, after_ids, others)
            elif not becomes_extremity and replaced_extremities:
                # Its prev events are no tips either; the current state is that of the
                # extremities left.
                previous_state = await self._state.get_current_state_ids(room_id)
                new_state = await self._state_of_extremities(event.room_version, others)
            if new_state is not None:
                changed = {k: v for k, v in new_state.items() if previous_state.get(k) != v}
                changed.update({k: None for k in previous_state if k not in new_state})

        needed_nids = {e for e in changed.values() if e is not None} - {event.event_id}
        if before.group is None and before.ids:
            needed_nids |= set(before.ids.values())
        nids = await self._events.nids_for_event_ids(list(needed_nids))
        # The event itself is not stored yet: it is added below, not looked up.
        member_events = await self._events.get_events(
            [
                e
                for (t, _), e in changed.items()
                if t == "m.room.member" and e is not None and e != event.event_id
            ],
            allow_rejected=True,
        )
        member_events[event.event_id] = event
        redaction_target = event.redacts if event.type == "m.room.redaction" and accepted else None
        if redaction_target is not None and not await self._may_redact(
            event, redaction_target, before.ids
        ):
            redaction_target = None  # kept in the DAG, but the target stays as it is

        current_state = None
        if new_state is not None:
            members, members_gone = _member_rows(changed, member_events)
            current_state = CurrentStateChange(
                previous_state, new_state, changed, members, members_gone
            )
        position = await self._writes.store_timeline_event(
            TimelineWrite(
                event,
                new_room=room_version,
                backfilled=context.backfilled,
                promote_outlier=existing is not None,
                state_before_group=before.group,
                state_before_ids=before.ids,
                state_after_ids=after_ids if changes_state else None,
                replaces_state=replaces,
                rejected_reason=context.rejected_reason,
                soft_failed=context.soft_failed,
                device_id=device_id,
                txn_id=txn_id,
                nids=nids,
                becomes_extremity=becomes_extremity,
                replaced_extremities=replaced_extremities,
                missing_prevs=missing_prevs,
                fills_gap=fills_gap,
                current_state=current_state,
                redaction_target=redaction_target,
                fresh=fresh,
            ),
            on_commit=self._tell_others(
                room_id, event if accepted and not context.backfilled else None, changed
            ),
        )
        if accepted and not context.backfilled:
            self._call_listeners(event, position, remote=False)
        if changed:
            self._call_state_listeners(room_id, changed, position)
        return position

    async def persist_new_room(self, events: Sequence[Event], room_version: RoomVersion) -> None:
        """A new room's first state events — its create event, then each event's only
        prev event the one before, with the state after it as its state before (createRoom
        builds and authorises them so) — in ONE transaction, decided without reads: each
        event is accepted, becomes the only forward extremity and sets its key of the
        current state. The caller holds the room's lock and has checked the room is new.
        Listeners hear about every event after commit, in order, as from `persist`."""
        writes: list[TimelineWrite] = []
        state: dict[StateKey, str] = {}
        prev: str | None = None
        for i, event in enumerate(events):
            key = event.state_map_key
            expected_prevs = [] if prev is None else [prev]
            if event.state_key is None or list(event.prev_event_ids) != expected_prevs:
                raise ValueError(f"{event.event_id} does not follow the new room's chain")
            if (i == 0) != (event.type == "m.room.create"):
                raise ValueError("a new room's chain starts with its create event only")
            before = state
            state = {**before, key: event.event_id}
            changed: dict[StateKey, str | None] = {key: event.event_id}
            members, gone = _member_rows(changed, {event.event_id: event})
            writes.append(
                TimelineWrite(
                    event,
                    new_room=room_version if i == 0 else None,
                    backfilled=False,
                    promote_outlier=False,
                    state_before_group=None,
                    state_before_ids=before,
                    state_after_ids=state,
                    replaces_state=before.get(key),
                    rejected_reason=None,
                    soft_failed=False,
                    device_id=None,
                    txn_id=None,
                    nids={},
                    becomes_extremity=True,
                    replaced_extremities=expected_prevs,
                    missing_prevs=[],
                    fills_gap=False,
                    current_state=CurrentStateChange(before, state, changed, members, gone),
                    redaction_target=None,
                    fresh=True,
                )
            )
            prev = event.event_id
        tell = [self._tell_others(e.room_id, e, {e.state_map_key: e.event_id}) for e in events]

        def told(positions: list[int]) -> None:
            for tell_one, position in zip(tell, positions, strict=True):
                if tell_one is not None:
                    tell_one(position)

        positions = await self._writes.store_new_room_events(writes, told)
        for event, position in zip(events, positions, strict=True):
            self._call_listeners(event, position, remote=False)
            self._call_state_listeners(
                event.room_id, {event.state_map_key: event.event_id}, position
            )

    async def _current_state_with(
        self, event: Event, after_ids: Mapping[StateKey, str], other_extremities: Sequence[str]
    ) -> Mapping[StateKey, str]:
        """The room's current state once `event` is a forward extremity beside
        `other_extremities`: the resolution of all their states."""
        if not other_extremities:
            return after_ids
        metas = await self._events.get_events_with_meta(other_extremities)
        groups = sorted({m.state_after for _, m in metas.values() if m.state_after is not None})
        states = await self._state.get_state_ids_for_groups(groups)
        return await self._calculator.resolve(
            event.room_version, [after_ids, *(states[g] for g in groups)], pending=[event]
        )

    async def _state_of_extremities(
        self, room_version: RoomVersion, extremities: Sequence[str]
    ) -> Mapping[StateKey, str] | None:
        """The resolution of the states after `extremities` (None if none is known)."""
        metas = await self._events.get_events_with_meta(extremities)
        groups = sorted({m.state_after for _, m in metas.values() if m.state_after is not None})
        if not groups:
            return None
        states = await self._state.get_state_ids_for_groups(groups)
        if len(groups) == 1:
            return states[groups[0]]
        return await self._calculator.resolve(room_version, [states[g] for g in groups])

    def _tell_others(
        self, room_id: str, event: Event | None, changed: Mapping[StateKey, str | None]
    ) -> Callable[[int], None] | None:
        """What the other processes (with workers) hear of a write to `room_id`, said
        in its commit's callbacks: in the same bus batch as the stream position it takes,
        and so applied before it there (starling/cluster/bus.py). Told later, a reader
        elsewhere could move past the position with the room's caches (its newest events,
        state tips, current state) still the old ones, and miss the event.
        `event`: the timeline event the listeners hear of, if any."""
        relay = self.relay
        if relay is None:
            return None

        def tell(position: int) -> None:
            relay.room(room_id)
            if event is not None:
                relay.event(event.event_id, position)
            if changed:
                relay.state(room_id, changed, position)

        return tell

    def _call_listeners(self, event: Event, position: int, *, remote: bool) -> None:
        for listener in self._listeners:
            if remote and listener in self._writer_only:
                continue
            try:
                listener(event, position)
            except Exception:
                logger.exception("new-event listener failed for %s", event.event_id)

    def replay_event(self, event: Event, position: int) -> None:
        """Another process persisted `event` (with workers): tell the listeners here."""
        self._call_listeners(event, position, remote=True)

    def replay_state(
        self, room_id: str, changed: Mapping[StateKey, str | None], position: int
    ) -> None:
        """Another process changed a room's current state (with workers)."""
        self._call_state_listeners(room_id, changed, position)

    def _call_state_listeners(
        self, room_id: str, changed: Mapping[StateKey, str | None], position: int
    ) -> None:
        for listener in self._state_listeners:
            try:
                listener(room_id, changed, position)
            except Exception:
                logger.exception("state listener failed for %s", room_id)


def _member_rows(
    changed: Mapping[StateKey, str | None], member_events: Mapping[str, Event]
) -> tuple[list[MemberRow], list[str]]:
    """The member events among a current-state change, and the users whose member key
    left the state."""
    rows: list[MemberRow] = []
    gone: list[str] = []
    for (etype, user_id), eid in changed.items():
        if etype != "m.room.member":
            continue
        if eid is None:
            gone.append(user_id)
            continue
        member_event = member_events.get(eid)
        if member_event is None or member_event.membership is None:
            continue
        rows.append((user_id, member_event.membership, eid))
    return rows, gone
