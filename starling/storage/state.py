"""Room state: state groups stored as bounded delta chains, and each room's current state.

A state group is the full state at some point of a room's DAG. It is stored as the keys
that differ from a previous group, and after `MAX_CHAIN_LENGTH` deltas as a full snapshot,
so reading any group walks a bounded chain in one recursive query, and a message (which
changes no state) costs no state rows at all. (type, state_key) pairs are interned to
integers (`state_keys`), entries point at `event_nid`s.

Groups are immutable, so they are cached once read. Current state is cached per room and
updated after each commit; only this process writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from starling.protocol.event import StateKey
from starling.storage.change_cache import StreamChangeCache
from starling.storage.database import Database, Transaction
from starling.storage.events import LruCache
from starling.storage.row_ids import row_ids
from starling.storage.state_chain import chain_query as _chain_query

MAX_CHAIN_LENGTH = 32

StateMap = Mapping[StateKey, str]


class StateStore:
    def __init__(self, db: Database, cache_size: int = 5_000) -> None:
        self._db = db
        self._group_ids = row_ids(db, "state_groups", "state_group")
        self._groups: LruCache[int, tuple[StateMap, int]] = LruCache(cache_size)
        self._key_nids: dict[StateKey, int] = {}
        # Groups created by transactions still open (their creator may build on them:
        # createRoom's chain), until commit or rollback. Never read through the pool: an
        # open transaction's rows are invisible there, and a transaction waiting for a
        # pooled connection while holding one can exhaust the pool (it did: #20).
        self._uncommitted: dict[int, tuple[StateMap, int]] = {}
        self._current: LruCache[str, dict[StateKey, str]] = LruCache(cache_size)
        # Users whose m.room.member changed in the current-state-delta stream (what
        # MembershipStore.get_membership_changes reads), once started.
        self.member_changes: StreamChangeCache[str] = StreamChangeCache()

    def _record_member_changes(
        self, txn: Transaction, keys: Iterable[StateKey], position: int
    ) -> None:
        users = [k[1] for k in keys if k[0] == "m.room.member"]
        if users:

            def record() -> None:
                for user_id in users:
                    self.member_changes.changed(user_id, position)

            txn.call_after_commit(record)

    def drop_current_state_cache(self) -> None:
        """Forget every room's cached current state (news from other processes lost)."""
        for room_id in self._current.keys():
            self._current.pop(room_id)

    def forget_room(self, room_id: str) -> None:
        """Drop the cached current state of a room purged from the database. (Cached state
        groups are keyed by group number, never reused, so they can stay.)"""
        self._current.pop(room_id)

    # --- state groups --------------------------------------------------------------------

    async def get_state_ids(self, group: int) -> StateMap:
        """The full state of a group: (type, state_key) -> event ID."""
        return (await self._load_group(group))[0]

    async def _load_group(self, group: int, txn: Transaction | None = None) -> tuple[StateMap, int]:
        """A group's state and chain length; inside a transaction read through it (see
        `_uncommitted`)."""
        hit = self._groups.get(group) or self._uncommitted.get(group)
        if hit is None:
            await self.get_state_ids_for_groups([group], txn)
            hit = self._groups.get(group)
        if hit is None:  # evicted at once by a tiny cache: read without caching
            state = (await self.get_state_ids_for_groups([group], txn))[group]
            return state, 0
        return hit

    async def get_state_ids_for_groups(
        self, groups: Iterable[int], txn: Transaction | None = None
    ) -> dict[int, StateMap]:
        """Full state for several groups: cached ones free, the rest in one query
        (through `txn` when given)."""
        out: dict[int, StateMap] = {}
        missing: list[int] = []
        for group in set(groups):
            hit = self._groups.get(group)
            if hit is None:
                missing.append(group)
            else:
                out[group] = hit[0]
        if not missing:
            return out
        rows = await (txn or self._db).fetch_all(
            _chain_query(self._db.sql.in_array("sg.state_group")),
            self._db.sql.array(missing),
        )
        states: dict[int, dict[StateKey, str]] = {g: {} for g in missing}
        chains: dict[int, int] = dict.fromkeys(missing, 0)
        for root, etype, state_key, event_id, dist in rows:
            states[int(root)][(etype, state_key)] = event_id
            chains[int(root)] = max(chains[int(root)], int(dist))
        for group, state in states.items():
            frozen: StateMap = MappingProxyType(state)
            self._groups.put(group, (frozen, chains[group]))
            out[group] = frozen
        return out

    async def get_state_entries_for_groups(
        self, groups: Iterable[int], keys: Iterable[StateKey]
    ) -> dict[int, dict[StateKey, str]]:
        """Only the given keys of several groups' state, in one query: what visibility
        checks and stripped state need, without loading a big room's whole state."""
        wanted = set(keys)
        out: dict[int, dict[StateKey, str]] = {}
        missing: list[int] = []
        for group in set(groups):
            hit = self._groups.get(group)
            if hit is None:
                missing.append(group)
            else:
                out[group] = {k: hit[0][k] for k in wanted if k in hit[0]}
        if not missing or not wanted:
            for group in missing:
                out[group] = {}
            return out
        types = sorted({t for t, _ in wanted})
        state_keys = sorted({sk for _, sk in wanted})
        rows = await self._db.fetch_all(
            _chain_query(
                self._db.sql.in_array("sg.state_group"),
                f" WHERE {self._db.sql.in_array('k.type')}"
                f" AND {self._db.sql.in_array('k.state_key')}",
            ),
            self._db.sql.array(missing),
            self._db.sql.array(types),
            self._db.sql.array(state_keys),
        )
        for group in missing:
            out[group] = {}
        for root, etype, state_key, event_id, _dist in rows:
            if (etype, state_key) in wanted:
                out[int(root)][(etype, state_key)] = event_id
        return out

    async def intern_keys(self, keys: Iterable[StateKey]) -> None:
        """Intern the (type, state_key) pairs not known yet in a short transaction of
        their own, before the write transaction that needs them begins. Inside that one,
        an INSERT of a key another open transaction has just inserted waits for it to end,
        and two transactions each waiting for a key the other inserted is a deadlock
        (PostgreSQL aborts one: a 500); here they wait for a short commit at most. Call it
        holding no transaction (it uses the pool)."""
        missing = sorted({k for k in keys if k not in self._key_nids})
        if not missing:
            return
        async with self._db.transaction() as txn:
            await self._key_nids_for(txn, missing)

    async def _key_nids_for(self, txn: Transaction, keys: list[StateKey]) -> dict[StateKey, int]:
        out: dict[StateKey, int] = {}
        missing: list[StateKey] = []
        for key in keys:
            nid = self._key_nids.get(key)
            if nid is None:
                missing.append(key)
            else:
                out[key] = nid
        if missing:
            missing.sort()  # the same lock order in every transaction
            await txn.executemany(
                "INSERT INTO state_keys (type, state_key) VALUES (?, ?) ON CONFLICT DO NOTHING",
                missing,
            )
            # One read for all of them: the rows matching both lists are a superset of the
            # pairs wanted, and the pairs not wanted are simply skipped.
            wanted = set(missing)
            rows = await txn.fetch_all(
                "SELECT type, state_key, key_nid FROM state_keys"
                f" WHERE {txn.sql.in_array('type')} AND {txn.sql.in_array('state_key')}",
                txn.sql.array(sorted({t for t, _ in wanted})),
                txn.sql.array(sorted({k for _, k in wanted})),
            )
            found: dict[StateKey, int] = {}
            for etype, state_key, nid in rows:
                if (etype, state_key) in wanted:
                    found[(etype, state_key)] = int(nid)
            out.update(found)
            # Known for good once committed (a rolled-back INSERT leaves no row).
            txn.call_after_commit(lambda: self._key_nids.update(found))
        return out

    async def create_group(
        self,
        txn: Transaction,
        room_id: str,
        prev_group: int | None,
        delta: Mapping[StateKey, str],
        full_state: Mapping[StateKey, str],
        event_nids: Mapping[str, int],
    ) -> int:
        """Store a new group whose full state is `full_state`, written as `delta` over
        `prev_group` unless that chain is already long (then as a snapshot).

        `event_nids` maps event IDs to their event_nid; those of written entries it lacks
        are read from the events table (a snapshot writes all of full_state, while callers
        usually know only the nids of what changed).
        """
        chain_length = 0
        if prev_group is not None:
            _, prev_chain = await self._load_group(prev_group, txn)
            chain_length = prev_chain + 1
            if chain_length > MAX_CHAIN_LENGTH:
                prev_group = None
                chain_length = 0
        entries = delta if prev_group is not None else full_state
        # The key is known, so the INSERT goes with the commit (row_ids.py).
        group = (await self._group_ids.allocate(txn))[0]
        await txn.queue(
            "INSERT INTO state_groups (state_group, room_id, prev_group, chain_length)"
            " VALUES (?, ?, ?, ?)",
            group,
            room_id,
            prev_group,
            chain_length,
        )
        if entries:
            nids = await self._key_nids_for(txn, list(entries))
            event_nids = await self._complete_event_nids(txn, entries.values(), event_nids)
            await txn.executemany(
                "INSERT INTO state_group_entries (state_group, key_nid, event_nid)"
                " VALUES (?, ?, ?)",
                [(group, nids[k], event_nids[eid]) for k, eid in entries.items()],
            )
        snapshot: StateMap = MappingProxyType(dict(full_state))
        self._uncommitted[group] = (snapshot, chain_length)

        def committed() -> None:
            self._uncommitted.pop(group, None)
            self._groups.put(group, (snapshot, chain_length))

        def rolled_back() -> None:
            self._uncommitted.pop(group, None)

        txn.call_after_commit(committed)
        txn.call_on_rollback(rolled_back)
        return group

    async def _complete_event_nids(
        self, txn: Transaction, event_ids: Iterable[str], known: Mapping[str, int]
    ) -> Mapping[str, int]:
        missing = {eid for eid in event_ids if eid not in known}
        if not missing:
            return known
        sql = self._db.sql
        rows = await txn.fetch_all(
            f"SELECT event_id, event_nid FROM events WHERE {sql.in_array('event_id')}",
            sql.array(sorted(missing)),
        )
        return {**known, **{str(r[0]): int(r[1]) for r in rows}}

    # --- current state -------------------------------------------------------------------

    async def get_current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        """The room's current state. The returned dict is shared: do not modify it."""
        hit = self._current.get(room_id)
        if hit is not None:
            return hit
        generation = self._current.generation
        rows = await self._db.fetch_all(
            "SELECT k.type, k.state_key, ev.event_id FROM current_state cs"
            " JOIN state_keys k ON k.key_nid = cs.key_nid"
            " JOIN events ev ON ev.event_nid = cs.event_nid"
            " WHERE cs.room_id = ?",
            room_id,
        )
        state = {(r[0], r[1]): r[2] for r in rows}
        self._current.fill(room_id, state, generation)
        return state

    async def get_current_state_for_rooms(
        self, room_ids: Iterable[str]
    ) -> dict[str, dict[StateKey, str]]:
        """Current state of several rooms: cached ones free, the rest in one query. The
        returned dicts are shared: do not modify them."""
        out: dict[str, dict[StateKey, str]] = {}
        missing: list[str] = []
        for room_id in set(room_ids):
            hit = self._current.get(room_id)
            if hit is None:
                missing.append(room_id)
            else:
                out[room_id] = hit
        if missing:
            generation = self._current.generation
            rows = await self._db.fetch_all(
                "SELECT cs.room_id, k.type, k.state_key, ev.event_id FROM current_state cs"
                " JOIN state_keys k ON k.key_nid = cs.key_nid"
                " JOIN events ev ON ev.event_nid = cs.event_nid"
                f" WHERE {self._db.sql.in_array('cs.room_id')}",
                self._db.sql.array(sorted(missing)),
            )
            loaded: dict[str, dict[StateKey, str]] = {room_id: {} for room_id in missing}
            for room_id, etype, state_key, event_id in rows:
                loaded[room_id][(etype, state_key)] = event_id
            for room_id, state in loaded.items():
                self._current.fill(room_id, state, generation)
                out[room_id] = state
        return out

    async def get_current_state_at(
        self, room_ids: Iterable[str], position: int
    ) -> dict[str, Mapping[StateKey, str]]:
        """Each room's current state as it was at events-stream `position`: the current
        state with every later change of the current-state-delta stream undone (so a
        state resolution after a fork counts, unlike the state after the last event).
        Two queries for any number of rooms."""
        wanted = sorted(set(room_ids))
        if not wanted:
            return {}
        # Current state first, then the changes: a change committed in between is undone
        # to the value the first read saw, so the result is consistent either way.
        current = await self.get_current_state_for_rooms(wanted)
        rows = await self._db.fetch_all(
            "SELECT room_id, type, state_key, prev_event_id FROM current_state_delta_stream"
            f" WHERE {self._db.sql.in_array('room_id')} AND stream_id > ?"
            " ORDER BY stream_id DESC",
            self._db.sql.array(wanted),
            position,
        )
        out: dict[str, Mapping[StateKey, str]] = dict(current)
        undone: dict[str, dict[StateKey, str]] = {}
        for room_id, etype, state_key, prev_event_id in rows:
            state = undone.get(room_id)
            if state is None:
                state = undone[room_id] = dict(current.get(room_id, {}))
            if prev_event_id is None:
                state.pop((etype, state_key), None)
            else:
                state[(etype, state_key)] = prev_event_id
        out.update(undone)
        return out

    async def record_state_delta(
        self,
        txn: Transaction,
        room_id: str,
        key: StateKey,
        event_id: str | None,
        prev_event_id: str | None,
        position: int,
    ) -> None:
        """One row of the current-state-delta stream without touching current state: an
        out-of-band membership (an invite to a room whose state this server lacks)."""
        await txn.queue(
            "INSERT INTO current_state_delta_stream"
            " (stream_id, room_id, type, state_key, event_id, prev_event_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            position,
            room_id,
            key[0],
            key[1],
            event_id,
            prev_event_id,
        )
        self._record_member_changes(txn, [key], position)

    async def update_current_state(
        self,
        txn: Transaction,
        room_id: str,
        new_state: Mapping[StateKey, str],
        changed: Mapping[StateKey, str | None],
        event_nids: Mapping[str, int],
        *,
        previous: Mapping[StateKey, str],
        position: int,
    ) -> None:
        """Write `changed` into current_state (None: the key left the state) and record
        each change in the current-state-delta stream at `position`, with the event it
        replaced (from `previous`, the state before). `new_state` is the full result,
        cached after commit."""
        if changed:
            nids = await self._key_nids_for(txn, list(changed))
            upserts = [(room_id, nids[k], event_nids[e]) for k, e in changed.items() if e]
            removed = [nids[k] for k, e in changed.items() if e is None]
            if upserts:
                await txn.executemany(
                    "INSERT INTO current_state (room_id, key_nid, event_nid) VALUES (?, ?, ?)"
                    " ON CONFLICT (room_id, key_nid) DO UPDATE SET"
                    " event_nid = excluded.event_nid",
                    upserts,
                )
            if removed:
                await txn.queue(
                    "DELETE FROM current_state WHERE room_id = ?"
                    f" AND {txn.sql.in_array('key_nid')}",
                    room_id,
                    txn.sql.array(removed),
                )
            await txn.executemany(
                "INSERT INTO current_state_delta_stream"
                " (stream_id, room_id, type, state_key, event_id, prev_event_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (position, room_id, k[0], k[1], e, previous.get(k))
                    for k, e in sorted(changed.items())
                ],
            )
            self._record_member_changes(txn, changed, position)
        snapshot = dict(new_state)
        txn.call_after_commit(lambda: self._current.put(room_id, snapshot))
        txn.call_on_rollback(lambda: self._current.pop(room_id))
