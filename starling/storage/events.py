"""Events: the room DAG's nodes, their stream positions and the rooms they belong to.

Events are immutable, so they are cached by ID once read (an LRU of parsed `Event`s); what
can change about an event (rejected, soft-failed, redacted) lives in `EventMeta`. A redacted
event is read in its redacted form (the cache entry is dropped when the redaction lands).
Every read takes a batch of IDs and costs one query for the cache misses.

Kinds of stored events (written only by rooms.persister): timeline events have a positive
stream position; backfilled ones a negative one (older history, never in /sync); outliers
none (known only as auth or state, no state of their own). Rejected and soft-failed events
are stored for federation answers and never served as timeline events. The graph: prev
edges (`event_edges`), auth edges (`event_auth`), forward extremities (the DAG's newest
accepted events) and backward extremities (prev events of accepted events that we lack).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from starling.protocol.event import Event, StateKey
from starling.protocol.redaction import RedactionError, redact
from starling.protocol.room_versions import RoomVersion, get_room_version
from starling.storage.change_cache import StreamChangeCache
from starling.storage.database import Database, Row, StorageError, Transaction
from starling.storage.row_ids import row_ids
from starling.storage.state_chain import chain_query


@dataclass(slots=True)
class EventMeta:
    """What the server knows about an event beyond its PDU."""

    event_nid: int
    stream_ordering: int | None
    rejected_reason: str | None
    soft_failed: bool
    outlier: bool
    device_id: str | None
    txn_id: str | None
    redacted_by: str | None
    replaces_state: str | None
    state_before: int | None
    state_after: int | None


class StoredEvent(NamedTuple):
    """An event as stored: its immutable PDU and what this server knows about it."""

    event: Event
    meta: EventMeta


K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A small LRU: immutable values only (events, state snapshots)."""

    def __init__(self, max_size: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._max = max_size
        # Bumped by every pop: a read that began before an invalidation (here, or one
        # from another process) must not put its older answer back (see `fill`).
        self.generation = 0

    def get(self, key: K) -> V | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self.generation += 1
        self._data.pop(key, None)

    def fill(self, key: K, value: V, generation: int) -> None:
        """Cache what a read found, unless something was invalidated since the read
        began (its `generation` then): the read may predate that write."""
        if generation == self.generation:
            self.put(key, value)

    def clear(self) -> None:
        self.generation += 1
        self._data.clear()

    def keys(self) -> list[K]:
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)


_EVENT_COLUMNS = (
    "e.event_id, e.json, r.room_version, e.event_nid, e.stream_ordering, e.rejected_reason,"
    " e.soft_failed, e.outlier, e.device_id, e.txn_id, e.redacted_by, e.replaces_state,"
    " e.state_before, e.state_after"
)

# What clients may see as timeline events: not outliers, not soft-failed, not rejected.
# Recent (position, state group) pairs remembered per room for get_state_groups_at.
MAX_TIPS = 8
# Served timeline events remembered per room for incremental /sync (see _recent).
MAX_RECENT = 16
_SERVED = "NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL"


class EventStore:
    def __init__(self, db: Database, cache_size: int = 50_000) -> None:
        self._db = db
        self._nids = row_ids(db, "events", "event_nid")
        self._events: LruCache[str, StoredEvent] = LruCache(cache_size)
        self._room_versions: dict[str, RoomVersion] = {}
        # Per-room extremities, cached: every write to them holds the room's lock and
        # updates the cache after commit (with workers, other processes' writes drop it,
        # starling/cluster).
        self._forward: LruCache[str, frozenset[str]] = LruCache(10_000)
        self._backward: LruCache[str, frozenset[str]] = LruCache(10_000)
        # Rooms with new timeline events (what get_rooms_changed_between finds), from
        # `track_room_changes` on (the composition root starts it).
        self._room_changes: StreamChangeCache[str] = StreamChangeCache()
        # Per room, (position, state_after) of its newest served timeline events, oldest
        # first, complete from the first one (see record_state_tip).
        self._tips: LruCache[str, list[tuple[int, int]]] = LruCache(10_000)
        # Per room, (position, event ID) of its newest served timeline events, oldest
        # first, complete from the first one (recorded after each commit, under the
        # room's lock, with the change cache): an incremental /sync's timeline is read
        # from these and the event cache, not the database (get_recent_events_for_ranges).
        self._recent: LruCache[str, list[tuple[int, str]]] = LruCache(10_000)
        # Set with workers (starling/cluster): tells the other processes of invalidations.
        self.on_invalidate: Callable[[str], None] | None = None
        # Set with workers: purges told to the others (room, purged event IDs or None
        # for the whole room).
        self.on_forget: Callable[[str, list[str] | None], None] | None = None
        # Per room, how many history purges (or their steps) this process heard of:
        # what remembers counts over a room's timeline starts afresh when it moves.
        self._purges: dict[str, int] = {}

    def drop_room_caches(self, room_id: str) -> None:
        """Another process wrote the room (or may have: its lock was just taken): forget
        its extremities and state tips, which only this process's writes kept fresh."""
        self._forward.pop(room_id)
        self._backward.pop(room_id)
        self._tips.pop(room_id)
        self._recent.pop(room_id)

    @property
    def room_changes(self) -> StreamChangeCache[str]:
        """Which rooms got timeline events after a position (what /sync asks)."""
        return self._room_changes

    def drop_all_caches(self) -> None:
        """Forget everything cached (another process's news may have been missed)."""
        for cache in (self._events, self._forward, self._backward, self._tips, self._recent):
            for key in cache.keys():
                cache.pop(key)

    def track_room_changes(self, position: int) -> None:
        """Remember, from events-stream `position` on, which rooms got timeline events."""
        self._room_changes.start(position)

    def record_state_tip(
        self, txn: Transaction, room_id: str, position: int, state_after: int
    ) -> None:
        """A served timeline event (not outlier, rejected, soft-failed or backfilled)
        and the state group after it, once `txn` commits: get_state_groups_at answers
        from these. The persister calls this for every such event, under the room's
        lock, so a room's list has every one of its events after its first entry."""

        def record() -> None:
            tips = self._tips.get(room_id)
            if tips is None:
                tips = []
                self._tips.put(room_id, tips)
            tips.append((position, state_after))
            tips.sort()
            del tips[:-MAX_TIPS]

        txn.call_after_commit(record)

    def _state_group_from_tips(self, room_id: str, position: int) -> int | None:
        tips = self._tips.get(room_id)
        if not tips or tips[0][0] > position:
            return None
        return max(t for t in tips if t[0] <= position)[1]

    def _record_room_change(
        self,
        txn: Transaction,
        event_id: str,
        room_id: str,
        position: int | None,
        outlier: bool,
        soft_failed: bool,
        rejected_reason: str | None,
    ) -> None:
        # Exactly the events get_rooms_changed_between counts (and _SERVED selects).
        if position is not None and position > 0 and not outlier and not soft_failed:
            if rejected_reason is None:

                def record() -> None:
                    self._room_changes.changed(room_id, position)
                    recent = self._recent.get(room_id)
                    if recent is None:
                        recent = []
                        self._recent.put(room_id, recent)
                    recent.append((position, event_id))
                    if len(recent) > 1 and recent[-2][0] > position:
                        recent.sort()
                    del recent[:-MAX_RECENT]

                txn.call_after_commit(record)

    def recent_event_ids(
        self, room_id: str, lower: int | None, upper: int
    ) -> list[tuple[str, int]] | None:
        """(event ID, position) of the room's served timeline events in (lower, upper],
        newest first, if the remembered ones cover that range (None: ask the database)."""
        recent = self._recent.get(room_id)
        if not recent or lower is None or lower + 1 < recent[0][0]:
            return None
        return [(eid, pos) for pos, eid in reversed(recent) if lower < pos <= upper]

    def _recent_in_range(
        self, room_id: str, lower: int | None, upper: int, limit: int
    ) -> list[str] | None:
        """The newest `limit` served events of the room in (lower, upper], newest first,
        if the remembered ones cover that range (None: ask the database)."""
        found = self.recent_event_ids(room_id, lower, upper)
        return None if found is None else [eid for eid, _ in found[:limit]]

    # --- rooms ---------------------------------------------------------------------------

    async def store_room(
        self, txn: Transaction, room_id: str, room_version: RoomVersion, creator: str, ts: int
    ) -> None:
        await txn.queue(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_id) DO NOTHING",
            room_id,
            room_version.identifier,
            creator,
            ts,
        )
        self._room_versions[room_id] = room_version

    def forget_room(self, room_id: str) -> None:
        """Drop what is cached of a room purged from the database (admin room deletion)."""
        self.forget_room_here(room_id)
        if self.on_forget is not None:
            self.on_forget(room_id, None)

    def forget_room_here(self, room_id: str) -> None:
        """`forget_room` for another process's purge: not told on."""
        self._room_versions.pop(room_id, None)
        self._tips.pop(room_id)
        self._recent.pop(room_id)
        self._forward.pop(room_id)
        self._backward.pop(room_id)
        for event_id in self._events.keys():
            cached = self._events.get(event_id)
            if cached is not None and cached.event.room_id == room_id:
                self._events.pop(event_id)

    def forget_events(self, room_id: str, event_ids: Iterable[str]) -> None:
        """Drop cached events deleted by a history purge (admin API, retention)."""
        ids = list(event_ids)
        self.forget_events_here(room_id, ids)
        if self.on_forget is not None:
            self.on_forget(room_id, ids)

    def forget_events_here(self, room_id: str, event_ids: Iterable[str]) -> None:
        """`forget_events` for another process's purge: not told on."""
        self._purges[room_id] = self._purges.get(room_id, 0) + 1
        self.drop_room_caches(room_id)
        for event_id in event_ids:
            self._events.pop(event_id)

    def purge_generation(self, room_id: str) -> int:
        """How many history purge steps of the room this process has heard of."""
        return self._purges.get(room_id, 0)

    def forget_extremities(self, room_id: str) -> None:
        """Drop the room's cached extremities after a history purge changed them."""
        self.forget_events(room_id, [])

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        rv = self._room_versions.get(room_id)
        if rv is None:
            ident = await self._db.fetch_val(
                "SELECT room_version FROM rooms WHERE room_id = ?", room_id
            )
            if ident is None:
                return None
            rv = get_room_version(ident)
            self._room_versions[room_id] = rv
        return rv

    # --- reading events ------------------------------------------------------------------

    def _from_row(self, row: Row) -> StoredEvent:
        rv = get_room_version(row[2])
        pdu = orjson.loads(row[1])
        if row[10] is not None:
            # A redacted event is read redacted everywhere (state content, profiles in
            # member lists, push rules, federation), as Synapse does; only the stored
            # row keeps the original until it is purged.
            with suppress(RedactionError):
                pdu = redact(pdu, rv)
        event = Event(pdu, row[0], rv)
        meta = EventMeta(
            event_nid=row[3],
            stream_ordering=row[4],
            rejected_reason=row[5],
            soft_failed=bool(row[6]),
            outlier=bool(row[7]),
            device_id=row[8],
            txn_id=row[9],
            redacted_by=row[10],
            replaces_state=row[11],
            state_before=row[12],
            state_after=row[13],
        )
        return StoredEvent(event, meta)

    async def get_events_with_meta(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        """Known events among `event_ids` (rejected ones included), with their metadata."""
        found: dict[str, StoredEvent] = {}
        missing: list[str] = []
        for eid in event_ids:
            hit = self._events.get(eid)
            if hit is None:
                missing.append(eid)
            else:
                found[eid] = hit
        if missing:
            for pair in await self._fetch_events(
                f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
                f" WHERE {self._db.sql.in_array('e.event_id')}",
                self._db.sql.array(missing),
            ):
                found[pair.event.event_id] = pair
        return found

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> dict[str, Event]:
        got = await self.get_events_with_meta(event_ids)
        return {
            eid: ev
            for eid, (ev, meta) in got.items()
            if allow_rejected or meta.rejected_reason is None
        }

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events_with_meta([event_id])).get(event_id)

    def invalidate(self, event_id: str) -> None:
        """Forget a cached event whose metadata changed (e.g. it was redacted)."""
        self._events.pop(event_id)
        if self.on_invalidate is not None:
            self.on_invalidate(event_id)

    def invalidate_here(self, event_id: str) -> None:
        """`invalidate` for another process's change: not told on."""
        self._events.pop(event_id)

    async def get_event_by_txn(
        self, sender: str, device_id: str, room_id: str, txn_id: str
    ) -> str | None:
        val = await self._db.fetch_val(
            "SELECT event_id FROM events"
            " WHERE sender = ? AND device_id = ? AND room_id = ? AND txn_id = ?",
            sender,
            device_id,
            room_id,
            txn_id,
        )
        return str(val) if val is not None else None

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        """The room's newest accepted events (cached; written only under the room's lock)."""
        hit = self._forward.get(room_id)
        if hit is None:
            generation = self._forward.generation
            rows = await self._db.fetch_all(
                "SELECT event_id FROM forward_extremities WHERE room_id = ?", room_id
            )
            hit = frozenset(str(r[0]) for r in rows)
            self._forward.fill(room_id, hit, generation)
        return sorted(hit)

    async def get_max_depth(self, event_ids: Sequence[str]) -> int:
        events = await self.get_events(event_ids, allow_rejected=True)
        return max((e.depth for e in events.values()), default=0)

    # --- timeline reads ------------------------------------------------------------------

    async def get_room_events_between(
        self,
        room_id: str,
        from_exclusive: int | None,
        to_inclusive: int,
        limit: int,
        backwards: bool = True,
    ) -> list[StoredEvent]:
        """Timeline events (not outliers, not soft-failed) with stream positions in
        (from_exclusive, to_inclusive], newest first when `backwards`."""
        lower = from_exclusive if from_exclusive is not None else -(2**62)
        order = "DESC" if backwards else "ASC"
        return await self._fetch_events(
            f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            " WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_SERVED} ORDER BY e.stream_ordering {order} LIMIT ?",
            room_id,
            lower,
            to_inclusive,
            limit,
        )

    async def get_events_for_rooms_between(
        self, room_ids: Sequence[str], from_exclusive: int, to_inclusive: int, limit: int
    ) -> list[StoredEvent]:
        """Timeline events of these rooms with stream positions in (from, to], oldest
        first, at most `limit` (the legacy /events stream)."""
        if not room_ids:
            return []
        return await self._fetch_events(
            f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE {self._db.sql.in_array('e.room_id')}"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ?"
            f" AND {_SERVED} ORDER BY e.stream_ordering ASC LIMIT ?",
            self._db.sql.array(room_ids),
            max(from_exclusive, 0),
            to_inclusive,
            limit,
        )

    async def get_room_history(
        self,
        room_id: str,
        *,
        after: tuple[int | None, int] | None,
        not_after: tuple[int | None, int] | None,
        max_stream: int | None,
        limit: int,
        backwards: bool,
    ) -> list[StoredEvent]:
        """Timeline events of the room in history (topological) order — by depth, then
        stream position — newest first when `backwards`. Backfilled events (negative
        positions) are included where their depth puts them.

        Bounds are (depth, stream) points: an event is "after" (d, s) when its (depth,
        stream) is greater; a point with depth None compares stream positions only (a
        stream token). `max_stream` leaves out events that arrived later (the reader's
        current position, or a departed member's last position)."""
        clauses = ["e.room_id = ?", "e.stream_ordering IS NOT NULL", _SERVED]
        args: list[object] = [room_id]
        if after is not None:
            depth, stream = after
            if depth is None:
                clauses.append("e.stream_ordering > ?")
                args.append(stream)
            else:
                clauses.append("(e.depth > ? OR (e.depth = ? AND e.stream_ordering > ?))")
                args.extend([depth, depth, stream])
        if not_after is not None:
            depth, stream = not_after
            if depth is None:
                clauses.append("e.stream_ordering <= ?")
                args.append(stream)
            else:
                clauses.append("(e.depth < ? OR (e.depth = ? AND e.stream_ordering <= ?))")
                args.extend([depth, depth, stream])
        if max_stream is not None:
            clauses.append("e.stream_ordering <= ?")
            args.append(max_stream)
        order = "DESC" if backwards else "ASC"
        return await self._fetch_events(
            f"SELECT {_EVENT_COLUMNS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            f" WHERE {' AND '.join(clauses)}"
            f" ORDER BY e.depth {order}, e.stream_ordering {order} LIMIT ?",
            *args,
            limit,
        )

    async def get_recent_events_for_rooms(
        self, room_ids: Sequence[str], from_exclusive: int | None, to_inclusive: int, limit: int
    ) -> dict[str, list[StoredEvent]]:
        """For each room, up to `limit` newest timeline events in (from, to], oldest first.

        One query for all rooms (a window function), so a sync over 50 rooms costs one
        round trip, not 50.
        """
        if not room_ids:
            return {}
        lower = from_exclusive if from_exclusive is not None else -(2**62)
        pairs = await self._fetch_events(
            f"SELECT {_EVENT_COLUMNS} FROM ("
            "  SELECT e.*, ROW_NUMBER() OVER ("
            "    PARTITION BY e.room_id ORDER BY e.stream_ordering DESC) AS rn"
            "  FROM events e"
            f"  WHERE {self._db.sql.in_array('e.room_id')}"
            f"    AND e.stream_ordering > ? AND e.stream_ordering <= ? AND {_SERVED}"
            ") e JOIN rooms r ON r.room_id = e.room_id"
            " WHERE e.rn <= ? ORDER BY e.stream_ordering ASC",
            self._db.sql.array(room_ids),
            lower,
            to_inclusive,
            limit,
        )
        out: dict[str, list[StoredEvent]] = {}
        for pair in pairs:
            out.setdefault(pair.event.room_id, []).append(pair)
        return out

    async def get_recent_events_for_ranges(
        self, ranges: Sequence[tuple[str, int | None, int]], limit: int
    ) -> dict[str, list[StoredEvent]]:
        """For each (room, from_exclusive, to_inclusive), up to `limit` newest timeline
        events in that range, newest first.

        One statement per 50 rooms on SQLite (on PostgreSQL one in all, LATERAL): a UNION
        ALL of per-room top-N scans, each served by the (room_id, stream_ordering) index, so a room's cost is `limit` rows however
        long its history (a window function would scan every event of every room).
        A range the room's remembered newest events cover (`_recent`: an incremental
        /sync's) is answered from them and the event cache instead.
        """
        out: dict[str, list[StoredEvent]] = {}
        items: list[tuple[str, int | None, int]] = []
        remembered: list[tuple[tuple[str, int | None, int], list[str]]] = []
        for item in ranges:
            ids = self._recent_in_range(*item, limit)
            if ids is None:
                items.append(item)
            elif ids:
                remembered.append((item, ids))
        if remembered:
            got = await self.get_events_with_meta(i for _, ids in remembered for i in ids)
            for item, ids in remembered:
                if all(i in got for i in ids):
                    out[item[0]] = [got[i] for i in ids]
                else:  # purged meanwhile: the database knows what is left
                    items.append(item)
        if items and self._db.dialect == "postgres":
            # One statement for every room: a LATERAL top-N scan per (room, range) row of
            # the arrays. The UNION ALL below costs PostgreSQL a plan per room on every
            # call (33 ms of planning for 50 rooms, against 3 ms of execution); this one
            # plans once, whatever the number of rooms.
            pairs = await self._fetch_events(
                f"SELECT {_EVENT_COLUMNS}"
                " FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS BIGINT[]))"
                " AS x(room_id, lower_pos, upper_pos)"
                " CROSS JOIN LATERAL (SELECT * FROM events e WHERE e.room_id = x.room_id"
                " AND e.stream_ordering > x.lower_pos AND e.stream_ordering <= x.upper_pos"
                f" AND {_SERVED} ORDER BY e.stream_ordering DESC LIMIT ?) AS e"
                " JOIN rooms r ON r.room_id = e.room_id",
                [room_id for room_id, _, _ in items],
                [lower if lower is not None else 0 for _, lower, _ in items],
                [upper for _, _, upper in items],
                limit,
            )
            for pair in pairs:
                out.setdefault(pair.event.room_id, []).append(pair)
            items = []
        for start in range(0, len(items), 50):
            chunk = items[start : start + 50]
            parts: list[str] = []
            args: list[object] = []
            for room_id, lower, upper in chunk:
                parts.append(
                    f"SELECT * FROM (SELECT {_EVENT_COLUMNS} FROM events e"
                    " JOIN rooms r ON r.room_id = e.room_id"
                    " WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
                    f" AND {_SERVED} ORDER BY e.stream_ordering DESC LIMIT ?) AS q"
                    f"{len(parts)}"
                )
                # Backfilled events (negative positions) are history, never /sync timeline.
                args.extend([room_id, lower if lower is not None else 0, upper, limit])
            pairs = await self._fetch_events(" UNION ALL ".join(parts), *args)
            for pair in pairs:
                out.setdefault(pair.event.room_id, []).append(pair)
        for events in out.values():
            events.sort(key=lambda p: -(p.meta.stream_ordering or 0))
        return out

    async def get_state_groups_at(self, room_ids: Sequence[str], position: int) -> dict[str, int]:
        """For each room, the state group after its last timeline event at or before
        `position` (the room's state as of that stream position). Rooms with no event by
        then are absent. One statement per 100 rooms, each an index lookup."""
        out: dict[str, int] = {}
        items: list[str] = []
        for room_id in room_ids:
            known = self._state_group_from_tips(room_id, position)
            if known is None:
                items.append(room_id)
            else:
                out[room_id] = known
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            parts = [
                "SELECT CAST(? AS TEXT), (SELECT e.state_after FROM events e"
                f" WHERE e.room_id = ? AND e.stream_ordering <= ? AND {_SERVED}"
                " AND e.state_after IS NOT NULL ORDER BY e.stream_ordering DESC LIMIT 1)"
                for _ in chunk
            ]
            args: list[object] = []
            for room_id in chunk:
                args.extend([room_id, room_id, position])
            rows = await self._db.fetch_all(" UNION ALL ".join(parts), *args)
            for room_id, group in rows:
                if group is not None:
                    out[room_id] = int(group)
        return out

    async def _fetch_events(self, sql: str, *args: Any) -> list[StoredEvent]:
        """The events of rows of `_EVENT_COLUMNS`, through the event cache: what it holds
        is taken (never older than the row); a row is cached unless an event was
        invalidated while the query ran (the row may predate that change, e.g. a
        redaction's commit: `LruCache.fill`)."""
        generation = self._events.generation
        rows = await self._db.fetch_all(sql, *args)
        out: list[StoredEvent] = []
        for row in rows:
            pair = self._events.get(row[0])
            if pair is None:
                pair = self._from_row(row)
                self._events.fill(row[0], pair, generation)
            out.append(pair)
        return out

    async def get_rooms_changed_between(
        self, room_ids: Sequence[str], from_exclusive: int, to_inclusive: int
    ) -> set[str]:
        if not room_ids:
            return set()
        known = self._room_changes.changed_between(room_ids, from_exclusive, to_inclusive)
        if known is not None:
            changed, unsure = known
            if not unsure:
                return changed
            room_ids = unsure
        else:
            changed = set()
        rows = await self._db.fetch_all(
            "SELECT DISTINCT room_id FROM events"
            f" WHERE {self._db.sql.in_array('room_id')}"
            " AND stream_ordering > ? AND stream_ordering <= ?"
            " AND NOT outlier AND NOT soft_failed AND rejected_reason IS NULL",
            self._db.sql.array(room_ids),
            from_exclusive,
            to_inclusive,
        )
        return changed | {r[0] for r in rows}

    # --- writing events ------------------------------------------------------------------

    async def insert_event(
        self,
        txn: Transaction,
        event: Event,
        *,
        stream_ordering: int | None,
        state_before: int | None,
        state_after: int | None,
        replaces_state: str | None = None,
        rejected_reason: str | None = None,
        soft_failed: bool = False,
        outlier: bool = False,
        device_id: str | None = None,
        txn_id: str | None = None,
    ) -> int:
        """Insert one event and its DAG edges; returns its event_nid."""
        values = (
            event.event_id,
            event.room_id,
            stream_ordering,
            event.depth,
            event.type,
            event.state_key,
            event.sender,
            event.origin_server_ts,
            orjson.dumps(event.pdu).decode(),
            state_before,
            state_after,
            rejected_reason,
            soft_failed,
            outlier,
            device_id,
            txn_id,
            replaces_state,
        )
        columns = (
            "event_id, room_id, stream_ordering, depth, type, state_key, sender,"
            " origin_server_ts, json, state_before, state_after, rejected_reason, soft_failed,"
            " outlier, device_id, txn_id, replaces_state"
        )
        # The key is known, so the INSERT goes with the commit (row_ids.py).
        nid = (await self._nids.allocate(txn))[0]
        await txn.queue(
            f"INSERT INTO events (event_nid, {columns}) VALUES (?, {', '.join('?' * len(values))})",
            nid,
            *values,
        )
        if event.prev_event_ids and not outlier:
            await txn.executemany(
                "INSERT INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(nid, p) for p in event.prev_event_ids],
            )
        await self._insert_auth_edges(txn, [event])
        meta = EventMeta(
            event_nid=int(nid),
            stream_ordering=stream_ordering,
            rejected_reason=rejected_reason,
            soft_failed=soft_failed,
            outlier=outlier,
            device_id=device_id,
            txn_id=txn_id,
            redacted_by=None,
            replaces_state=replaces_state,
            state_before=state_before,
            state_after=state_after,
        )
        txn.call_after_commit(lambda: self._events.put(event.event_id, StoredEvent(event, meta)))
        self._record_room_change(
            txn, event.event_id, event.room_id, stream_ordering, outlier, soft_failed,
            rejected_reason,
        )  # fmt: skip
        return int(nid)

    async def _insert_auth_edges(self, txn: Transaction, events: Sequence[Event]) -> None:
        rows = {(e.event_id, a) for e in events for a in e.auth_event_ids}
        if rows:
            await txn.executemany(
                "INSERT INTO event_auth (event_id, auth_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                sorted(rows),
            )

    async def insert_outliers(
        self, txn: Transaction, events: Sequence[Event], rejected: Mapping[str, str]
    ) -> None:
        """Insert events known only as auth or state (no stream position, no state), with
        their prev and auth edges, in one batch. Events already stored are left as they
        are."""
        if not events:
            return
        rows = [
            (
                e.event_id,
                e.room_id,
                e.depth,
                e.type,
                e.state_key,
                e.sender,
                e.origin_server_ts,
                orjson.dumps(e.pdu).decode(),
                rejected.get(e.event_id),
            )
            for e in events
        ]
        columns = (
            "event_id, room_id, stream_ordering, depth, type, state_key, sender,"
            " origin_server_ts, json, rejected_reason, outlier"
        )
        values = "?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, TRUE"
        # SQLite: keys from the allocator insert_event uses (a skipped duplicate leaves a
        # gap); PostgreSQL: the identity column chooses, from the same sequence.
        nids = await self._nids.allocate(txn, len(rows)) if txn.dialect == "sqlite" else None
        if nids is None:
            await txn.executemany(
                f"INSERT INTO events ({columns}) VALUES ({values})"
                " ON CONFLICT (event_id) DO NOTHING",
                rows,
            )
        else:
            await txn.executemany(
                f"INSERT INTO events (event_nid, {columns}) VALUES (?, {values})"
                " ON CONFLICT (event_id) DO NOTHING",
                [(nid, *row) for nid, row in zip(nids, rows, strict=True)],
            )
        await self._insert_auth_edges(txn, events)
        await self._insert_outlier_edges(txn, events)

    async def _insert_outlier_edges(self, txn: Transaction, events: Sequence[Event]) -> None:
        """Prev edges of just-inserted outliers (one statement): an outlier is a known
        descendant of what it cites, so nothing it cites is a forward extremity."""
        ids = sorted({e.event_id for e in events if e.prev_event_ids})
        if not ids:
            return
        rows = await txn.fetch_all(
            f"SELECT event_id, event_nid FROM events WHERE {txn.sql.in_array('event_id')}",
            txn.sql.array(ids),
        )
        nids = {str(r[0]): int(r[1]) for r in rows}
        edges = sorted(
            {(nids[e.event_id], p) for e in events if e.event_id in nids for p in e.prev_event_ids}
        )
        if edges:
            await txn.executemany(
                "INSERT INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                edges,
            )

    async def is_cited_as_prev_event(self, event_id: str) -> bool:
        """Whether a stored event that is neither rejected nor soft-failed (a timeline
        event or an outlier) cites `event_id` among its prev_events."""
        row = await self._db.fetch_one(
            "SELECT 1 FROM event_edges ed JOIN events r ON r.event_nid = ed.event_nid"
            " WHERE ed.prev_event_id = ? AND r.rejected_reason IS NULL AND NOT r.soft_failed"
            " LIMIT 1",
            event_id,
        )
        return row is not None

    async def promote_outlier(
        self,
        txn: Transaction,
        event: Event,
        *,
        stream_ordering: int,
        state_before: int | None,
        state_after: int | None,
        replaces_state: str | None,
        rejected_reason: str | None,
        soft_failed: bool,
    ) -> int:
        """Make a stored outlier a timeline event (its state is now known); returns its
        event_nid."""
        nid = await txn.fetch_val(
            "UPDATE events SET stream_ordering = ?, state_before = ?, state_after = ?,"
            " replaces_state = ?, rejected_reason = ?, soft_failed = ?, outlier = FALSE"
            " WHERE event_id = ? AND outlier RETURNING event_nid",
            stream_ordering,
            state_before,
            state_after,
            replaces_state,
            rejected_reason,
            soft_failed,
            event.event_id,
        )
        if nid is None:
            raise StorageError(f"{event.event_id} is not a stored outlier")
        if event.prev_event_ids:
            await txn.executemany(
                "INSERT INTO event_edges (event_nid, prev_event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(nid, p) for p in event.prev_event_ids],
            )
        txn.call_after_commit(lambda: self.invalidate(event.event_id))
        self._record_room_change(
            txn, event.event_id, event.room_id, stream_ordering, False, soft_failed,
            rejected_reason,
        )  # fmt: skip
        return int(nid)

    async def set_outlier_position(self, txn: Transaction, event_id: str, position: int) -> None:
        """Give a stored outlier a stream position (an out-of-band membership)."""
        await txn.execute(
            "UPDATE events SET stream_ordering = ? WHERE event_id = ? AND outlier",
            position,
            event_id,
        )
        txn.call_after_commit(lambda: self.invalidate(event_id))

    async def set_forward_extremities(
        self, txn: Transaction, room_id: str, remove: Iterable[str], add: str | None
    ) -> None:
        """Remove `remove` from the room's forward extremities and add `add`."""
        removed = list(remove)
        known = self._forward.get(room_id)
        if known is not None:
            after = (known - set(removed)) | ({add} if add is not None else set())
            txn.call_after_commit(lambda: self._forward.put(room_id, after))
        else:
            txn.call_after_commit(lambda: self._forward.pop(room_id))
        txn.call_on_rollback(lambda: self._forward.pop(room_id))
        if (
            len(removed) == 1
            and add is not None
            and known is not None
            and removed[0] in known
            and add not in known
        ):
            # The usual case, an event on top of the only extremity: one statement.
            await txn.queue(
                "UPDATE forward_extremities SET event_id = ? WHERE room_id = ? AND event_id = ?",
                add,
                room_id,
                removed[0],
            )
            return
        if removed:
            await txn.queue(
                "DELETE FROM forward_extremities WHERE room_id = ?"
                f" AND {txn.sql.in_array('event_id')}",
                room_id,
                txn.sql.array(removed),
            )
        if add is not None:
            await txn.queue(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                room_id,
                add,
            )

    # --- the graph: backward extremities, auth chains, state at an event ---------------

    async def have_events(self, event_ids: Iterable[str]) -> set[str]:
        """Those of `event_ids` stored here in any form (outliers, rejected included)."""
        wanted = set(event_ids)
        found = {eid for eid in wanted if self._events.get(eid) is not None}
        rest = sorted(wanted - found)
        if rest:
            rows = await self._db.fetch_all(
                f"SELECT event_id FROM events WHERE {self._db.sql.in_array('event_id')}",
                self._db.sql.array(rest),
            )
            found.update(str(r[0]) for r in rows)
        return found

    async def get_backward_extremities(self, room_id: str) -> list[str]:
        """Prev events of the room's accepted timeline events that are not stored here
        (or only as outliers): where backfill continues."""
        return sorted(await self._backward_extremities(room_id))

    async def _backward_extremities(self, room_id: str) -> frozenset[str]:
        hit = self._backward.get(room_id)
        if hit is None:
            generation = self._backward.generation
            rows = await self._db.fetch_all(
                "SELECT event_id FROM backward_extremities WHERE room_id = ?", room_id
            )
            hit = frozenset(str(r[0]) for r in rows)
            self._backward.fill(room_id, hit, generation)
        return hit

    async def is_backward_extremity(self, room_id: str, event_id: str) -> bool:
        return event_id in await self._backward_extremities(room_id)

    async def update_backward_extremities(
        self, txn: Transaction, room_id: str, add: Iterable[str], remove: Iterable[str]
    ) -> None:
        """Add and remove backward extremities (the cached set is updated after commit;
        one writer per room, as every room write holds the room's lock)."""
        current = await self._backward_extremities(room_id)
        added = sorted(set(add) - current)
        removed = sorted(set(remove) & current)
        if added:
            await txn.executemany(
                "INSERT INTO backward_extremities (room_id, event_id) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                [(room_id, eid) for eid in added],
            )
        if removed:
            await txn.queue(
                "DELETE FROM backward_extremities WHERE room_id = ?"
                f" AND {txn.sql.in_array('event_id')}",
                room_id,
                txn.sql.array(removed),
            )
        if added or removed:
            after = (current | set(added)) - set(removed)
            txn.call_after_commit(lambda: self._backward.put(room_id, after))
            txn.call_on_rollback(lambda: self._backward.pop(room_id))

    async def get_auth_chain_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Every event reachable from `event_ids` through auth edges (the starting
        events only if another one reaches them), in one recursive query."""
        starts = sorted(set(event_ids))
        if not starts:
            return set()
        rows = await self._db.fetch_all(
            "WITH RECURSIVE chain (id) AS ("
            "  SELECT auth_event_id FROM event_auth"
            f"  WHERE {self._db.sql.in_array('event_id')}"
            "  UNION"
            "  SELECT ea.auth_event_id FROM event_auth ea JOIN chain ON ea.event_id = chain.id"
            ") SELECT id FROM chain",
            self._db.sql.array(starts),
        )
        return {str(r[0]) for r in rows}

    async def get_state_ids_before(self, event_id: str) -> dict[StateKey, str] | None:
        """The room state before the event, or None if the event is unknown or an
        outlier whose state is not known here (a purge's outliers keep theirs)."""
        found = await self.get_event(event_id)
        if found is None or found.meta.state_before is None:
            if found is not None and not found.meta.outlier and found.event.prev_event_ids == ():
                return {}  # a create event: the state before it is empty
            return None
        rows = await self._db.fetch_all(
            chain_query(self._db.sql.in_array("sg.state_group")),
            self._db.sql.array([found.meta.state_before]),
        )
        return {(etype, state_key): eid for _root, etype, state_key, eid, _dist in rows}

    async def set_state_after(
        self, txn: Transaction, event_id: str, event_nid: int, group: int
    ) -> None:
        """Record the state group after a state event (stored after the event itself,
        whose nid the group's entry needs)."""
        await txn.queue("UPDATE events SET state_after = ? WHERE event_nid = ?", group, event_nid)

        def refresh() -> None:
            # The cached meta was built with state_after = before: other processes drop
            # theirs, this one keeps the event with the new group (the next event in the
            # room reads it as its prev event, and would otherwise wait for the database).
            hit = self._events.get(event_id)
            self.invalidate(event_id)
            if hit is not None:
                meta = replace(hit.meta, state_after=group)
                self._events.put(event_id, StoredEvent(hit.event, meta))

        txn.call_after_commit(refresh)

    async def mark_redacted(self, txn: Transaction, target_id: str, redaction_id: str) -> None:
        await txn.queue(
            "UPDATE events SET redacted_by = ? WHERE event_id = ? AND redacted_by IS NULL",
            redaction_id,
            target_id,
        )
        txn.call_after_commit(lambda: self.invalidate(target_id))

    async def nids_for_event_ids(self, event_ids: Sequence[str]) -> dict[str, int]:
        got = await self.get_events_with_meta(event_ids)
        return {eid: meta.event_nid for eid, (_, meta) in got.items()}
