"""The state of a room at a point of its graph (DESIGN §6, spec "Room State Resolution").

The state before an event is the resolution of the states after its prev_events; the
state after an event is the state before it plus the event itself (unless it was
rejected: a rejected event's stored state after is its state before, so it never counts).
A prev event that is unknown here, or known only as an outlier (no state), makes the
state unknowable locally: `MissingStateError` names them, and the federation pipeline
fetches them (get_missing_events, or /state_ids at the event) and tries again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import RoomVersion
from starling.protocol.state_res import MissingEventsError, resolve_state
from starling.storage.events import EventStore
from starling.storage.state import StateStore

# Rounds of loading missing auth events for one state resolution before giving up.
MAX_RESOLVE_ROUNDS = 50


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """The state at a point of the DAG: the map, and the stored group holding it (if any)."""

    ids: Mapping[StateKey, str]
    group: int | None


EMPTY_STATE = StateSnapshot({}, None)


class MissingStateError(Exception):
    """The state cannot be computed: these events are unknown here, or outliers."""

    def __init__(self, event_ids: Iterable[str]) -> None:
        self.event_ids: frozenset[str] = frozenset(event_ids)
        shown = ", ".join(sorted(self.event_ids)[:5])
        super().__init__(f"state unknown: {len(self.event_ids)} events missing ({shown})")


class StateCalculator:
    def __init__(self, events: EventStore, state: StateStore) -> None:
        self._events = events
        self._state = state

    async def state_after_events(
        self, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> StateSnapshot:
        """The state after the given events, resolved if they disagree."""
        if not event_ids:
            return EMPTY_STATE
        metas = await self._events.get_events_with_meta(event_ids)
        missing = [
            eid
            for eid in event_ids
            if eid not in metas or metas[eid].meta.outlier or metas[eid].meta.state_after is None
        ]
        if missing:
            raise MissingStateError(missing)
        groups = sorted({m.state_after for _, m in metas.values() if m.state_after is not None})
        if len(groups) == 1:
            return StateSnapshot(await self._state.get_state_ids(groups[0]), groups[0])
        by_group = await self._state.get_state_ids_for_groups(groups)
        resolved = await self.resolve(room_version, [by_group[g] for g in groups])
        return StateSnapshot(resolved, None)

    async def state_before(self, event: Event) -> StateSnapshot:
        """The state before `event`: the resolution of its prev events' states (a rejected
        prev event contributes the state before it). Raises MissingStateError."""
        return await self.state_after_events(
            event.room_id, event.room_version, event.prev_event_ids
        )

    async def resolve(
        self,
        room_version: RoomVersion,
        state_sets: Sequence[Mapping[StateKey, str]],
        *,
        pending: Iterable[Event] = (),
    ) -> dict[StateKey, str]:
        """State resolution with the events it needs (state sets and their auth chains)
        loaded from the store, or among `pending` (events being persisted, not stored
        yet). Raises MissingStateError naming events not stored here."""
        distinct = {tuple(sorted(s.items())) for s in state_sets}
        if len(distinct) <= 1:
            return dict(state_sets[0]) if state_sets else {}
        wanted = {eid for s in state_sets for eid in s.values()}
        loaded: dict[str, Event] = {e.event_id: e for e in pending}
        rejected: set[str] = set()
        for _ in range(MAX_RESOLVE_ROUNDS):
            got = await self._events.get_events_with_meta(wanted - loaded.keys())
            for eid, (event, meta) in got.items():
                loaded[eid] = event
                if meta.rejected_reason is not None:
                    rejected.add(eid)
            try:
                return resolve_state(room_version, state_sets, loaded, rejected_event_ids=rejected)
            except MissingEventsError as e:
                missing = set(e.event_ids) - loaded.keys()
                if not missing or missing <= wanted:
                    raise MissingStateError(missing or e.event_ids) from None
                wanted |= missing
        raise MissingStateError(wanted - loaded.keys())
