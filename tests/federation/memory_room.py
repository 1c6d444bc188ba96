"""An in-memory event store + state calculator + persister with the contract's semantics
(TEAM.md: StateCalculator, EventPersister, EventStore additions), so the receipt
pipeline's logic can be tested without a database. The storage-backed integration tests
run the same scenarios against the real persister on both engines.

Semantics kept: rejected events never change state nor become extremities; soft-failed
and backfilled events are stored but are not extremities; outliers have no state; the
state before an event is the resolution of its non-rejected prev events' states; the
current state is the resolution of the forward extremities' states.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from starling.protocol.event import Event, StateKey
from starling.protocol.room_versions import RoomVersion
from starling.protocol.state_res import resolve_state
from starling.rooms.persister import EventContext
from starling.rooms.state_calculator import MissingStateError, StateSnapshot


@dataclass
class Meta:
    rejected_reason: str | None = None
    soft_failed: bool = False
    outlier: bool = False
    backfilled: bool = False
    state_after: dict[StateKey, str] | None = None
    state_before: dict[StateKey, str] | None = None
    redacted_by: str | None = None
    position: int | None = None


class Stored(NamedTuple):
    """The fake's StoredEvent: the event and what the fake knows of it."""

    event: Event
    meta: Meta


@dataclass
class MemoryRooms:
    rooms: dict[str, RoomVersion] = field(default_factory=dict)
    events: dict[str, Stored] = field(default_factory=dict)
    extremities: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    current: dict[str, dict[StateKey, str]] = field(default_factory=dict)
    position: int = 0
    timeline: list[str] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    # --- EventStore ---------------------------------------------------------------------

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        return self.rooms.get(room_id)

    async def get_events_with_meta(self, event_ids: Iterable[str]) -> dict[str, Stored]:
        return {e: self.events[e] for e in event_ids if e in self.events}

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> dict[str, Event]:
        return {
            eid: ev
            for eid, (ev, m) in (await self.get_events_with_meta(event_ids)).items()
            if allow_rejected or m.rejected_reason is None
        }

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        return list(self.extremities[room_id])

    async def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        return dict(self.current.get(room_id, {}))

    async def get_joined_users(self, room_id: str) -> frozenset[str]:
        out = set()
        for (etype, sk), eid in self.current.get(room_id, {}).items():
            if etype == "m.room.member" and self.events[eid].event.membership == "join":
                out.add(sk)
        return frozenset(out)

    async def get_state_ids_before(self, event_id: str) -> dict[StateKey, str] | None:
        got = self.events.get(event_id)
        if got is None or got[1].state_before is None:
            return None
        return dict(got[1].state_before)

    async def get_backward_extremities(self, room_id: str) -> list[str]:
        """Prev events of the room's DAG events that we lack (or hold only as outliers)."""
        out = set()
        for ev, meta in self.events.values():
            if ev.room_id != room_id or meta.outlier:
                continue
            for p in ev.prev_event_ids:
                got = self.events.get(p)
                if got is None or got[1].outlier:
                    out.add(p)
        return sorted(out)

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        out: set[str] = set()
        todo = list(event_ids)
        while todo:
            got = self.events.get(todo.pop())
            if got is None:
                continue
            for a in got[0].auth_event_ids:
                if a not in out:
                    out.add(a)
                    todo.append(a)
        return out

    @asynccontextmanager
    async def _lock(self, room_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            yield

    def lock(self, room_id: str):  # type: ignore[no-untyped-def]
        return self._lock(room_id)

    # --- StateCalculator ------------------------------------------------------------------

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        if len(state_sets) == 1:
            return dict(state_sets[0])
        loaded = {eid: ev for eid, (ev, _) in self.events.items()}
        rejected = {eid for eid, (_, m) in self.events.items() if m.rejected_reason}
        return resolve_state(room_version, state_sets, loaded, rejected_event_ids=rejected)

    async def state_after_events(
        self, room_id: str, room_version: RoomVersion, event_ids: Sequence[str]
    ) -> StateSnapshot:
        sets = []
        for eid in event_ids:
            meta = self.events[eid].meta
            if meta.state_after is None:
                raise MissingStateError(frozenset([eid]))
            sets.append(meta.state_after)
        return StateSnapshot(await self.resolve(room_version, sets), None)

    async def state_before(self, event: Event) -> StateSnapshot:
        prevs = []
        for p in event.prev_event_ids:
            got = self.events.get(p)
            if got is None or got[1].outlier:
                raise MissingStateError(frozenset([p]))
            if got[1].rejected_reason is None:
                prevs.append(p)
        return await self.state_after_events(event.room_id, event.room_version, prevs)

    # --- EventPersister -------------------------------------------------------------------

    async def persist_outliers(
        self,
        events: Sequence[Event],
        room_version: RoomVersion,
        *,
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        for ev in events:
            reason = (rejected or {}).get(ev.event_id)
            self.events.setdefault(
                ev.event_id, Stored(ev, Meta(outlier=True, rejected_reason=reason))
            )

    async def persist(
        self, event: Event, context: EventContext, *, new_room: RoomVersion | None = None
    ) -> int | None:
        room_id = event.room_id
        if new_room is not None:
            self.rooms[room_id] = new_room
        after = dict(context.state_before.ids)
        if event.is_state and context.rejected_reason is None:
            after[event.state_map_key] = event.event_id
        self.position += 1
        pos = -self.position if context.backfilled else self.position
        meta = Meta(
            rejected_reason=context.rejected_reason,
            soft_failed=context.soft_failed,
            backfilled=context.backfilled,
            state_after=after,
            state_before=dict(context.state_before.ids),
            position=pos,
        )
        self.events[event.event_id] = Stored(event, meta)
        if context.rejected_reason is None and not context.soft_failed:
            if not context.backfilled:
                self.timeline.append(event.event_id)
        if context.rejected_reason or context.soft_failed or context.backfilled:
            return pos
        ext = [e for e in self.extremities[room_id] if e not in event.prev_event_ids]
        ext.append(event.event_id)
        self.extremities[room_id] = ext
        rv = self.rooms[room_id]
        self.current[room_id] = (await self.state_after_events(room_id, rv, ext)).ids  # type: ignore[assignment]
        return pos

    # --- test helpers -------------------------------------------------------------------

    def meta(self, event_id: str) -> Meta:
        return self.events[event_id].meta

    async def seed(self, room_version: RoomVersion, events: Sequence[Event]) -> None:
        """Persist `events` (in order, each accepted on top of the previous ones)."""
        for i, ev in enumerate(events):
            if i == 0:
                before = StateSnapshot({}, None)
            else:
                before = await self.state_before(ev)
            await self.persist(ev, EventContext(before), new_room=room_version if i == 0 else None)
