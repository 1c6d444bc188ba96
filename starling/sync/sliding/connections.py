"""Per-connection state behind sliding sync's `pos` (MSC4186 "Connections").

A connection is (user, device, conn_id). Each response stores an immutable `Snapshot` of
what the client has once it processed that response: every stream's position and, per
room sent, up to where and with which room config. A request with `pos` is answered from
that snapshot, so a room is sent again only with what changed.

A `pos` is a sync token (`s<events>~ss_conn.<nonce>~ss_seq.<n>`), so /messages and
/relations accept it as the MSC says; the nonce is drawn per connection, and a `pos` is
looked up under the requester's own user and device, so another user's `pos` is unknown
here (M_UNKNOWN_POS), whatever it contains. A retried request (same `pos`) is answered
from the same snapshot again: the snapshot a `pos` names is kept until the client uses a
later one.

Snapshots are stored in the database (storage/sliding_connections.py), written before the
response that names them is sent: after a restart, or in another process, a `pos` is still
known and the client goes on where it was. Decoded snapshots are cached in this process;
they never change once written, and every `pos` is still checked against the database
(one indexed lookup), so a snapshot dropped by another process is unknown here too.

Bounded: at most `MAX_PER_DEVICE` connections per device (least recently used dropped
first), connections unused for `EXPIRY_MS` dropped, at most `MAX_SNAPSHOTS` snapshots per
connection.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from starling.errors import MatrixError
from starling.storage.sliding_connections import SlidingConnectionStore
from starling.sync.sliding.request import CombinedConfig, RequiredState, StateRule
from starling.sync.tokens import SyncToken

MAX_PER_DEVICE = 10
MAX_SNAPSHOTS = 4
EXPIRY_MS = 7 * 24 * 3600 * 1000  # a connection unused this long is forgotten
CACHED_SNAPSHOTS = 2_000
CONN_STREAM = "ss_conn"
SEQ_STREAM = "ss_seq"


def unknown_pos(msg: str = "Unknown position; start a new connection") -> MatrixError:
    return MatrixError(400, "M_UNKNOWN_POS", msg)


@dataclass(frozen=True, slots=True)
class RoomSent:
    """What a connection has of one room."""

    position: int  # the events position the room's timeline and state are sent up to
    membership: str
    membership_event: str | None
    config: CombinedConfig
    # Members sent because of lazy loading (their member event IDs), not to be resent.
    lazy_members: Mapping[str, str] = field(default_factory=dict)
    # How many of the room's newest events (at `position`) the client has been sent.
    timeline_depth: int = 0


@dataclass(frozen=True)
class Snapshot:
    token: SyncToken
    rooms: Mapping[str, RoomSent]
    list_counts: Mapping[str, int]
    # The joined rooms the room-scoped extensions covered in that response: a room
    # coming back into scope gets its current receipts, typing and account data.
    extension_rooms: frozenset[str] = frozenset()


EMPTY = Snapshot(SyncToken(0), MappingProxyType({}), MappingProxyType({}))

ConnKey = tuple[str, str, str]


@dataclass(frozen=True)
class Connection:
    key: ConnKey
    nonce: int


def _pos_parts(pos: str) -> tuple[int, int, int]:
    try:
        token = SyncToken.parse(pos)
    except MatrixError:
        raise unknown_pos("Malformed pos") from None
    nonce = token.streams.get(CONN_STREAM)
    seq = token.streams.get(SEQ_STREAM)
    if nonce is None or seq is None:
        raise unknown_pos("Not a sliding sync pos")
    if not (0 <= nonce < 2**63 and 0 <= seq < 2**63):
        raise unknown_pos()  # never one of ours, and beyond the database's integers
    return token.events, nonce, seq


# --- the stored form of a snapshot ---------------------------------------------------------
# Configs are shared by many rooms (every room of a list has the list's), so each distinct
# config is written once and rooms name it by index.


def _rules(rules: frozenset[StateRule]) -> list[list[str | None]]:
    return sorted(([r.type, r.state_key] for r in rules), key=lambda r: (r[0] or "", r[1] or ""))


def _encode_config(config: CombinedConfig) -> list[Any]:
    states = [
        [_rules(state.include), _rules(state.exclude), state.lazy_members]
        for state in config.states
    ]
    return [config.timeline_limit, config.lazy_members, states]


def _decode_config(raw: list[Any]) -> CombinedConfig:
    limit, lazy, states = raw
    return CombinedConfig(
        int(limit),
        frozenset(
            RequiredState(
                frozenset(StateRule(t, k) for t, k in include),
                frozenset(StateRule(t, k) for t, k in exclude),
                bool(state_lazy),
            )
            for include, exclude, state_lazy in states
        ),
        bool(lazy),
    )


def encode_snapshot(snapshot: Snapshot) -> str:
    configs: dict[CombinedConfig, int] = {}
    rooms: dict[str, list[Any]] = {}
    for room_id, sent in snapshot.rooms.items():
        index = configs.setdefault(sent.config, len(configs))
        entry: list[Any] = [
            sent.position,
            sent.membership,
            sent.membership_event,
            index,
            sent.timeline_depth,
        ]
        if sent.lazy_members:
            entry.append(dict(sent.lazy_members))
        rooms[room_id] = entry
    return orjson.dumps(
        {
            "t": snapshot.token.encode(),
            "c": [_encode_config(c) for c in configs],
            "r": rooms,
            "l": dict(snapshot.list_counts),
            "x": sorted(snapshot.extension_rooms),
        }
    ).decode()


def decode_snapshot(data: str) -> Snapshot:
    raw = orjson.loads(data)
    configs = [_decode_config(c) for c in raw["c"]]
    rooms: dict[str, RoomSent] = {}
    for room_id, entry in raw["r"].items():
        rooms[room_id] = RoomSent(
            position=int(entry[0]),
            membership=entry[1],
            membership_event=entry[2],
            config=configs[entry[3]],
            lazy_members=MappingProxyType(entry[5]) if len(entry) > 5 else MappingProxyType({}),
            timeline_depth=int(entry[4]),
        )
    return Snapshot(
        SyncToken.parse(raw["t"]),
        MappingProxyType(rooms),
        MappingProxyType({k: int(v) for k, v in raw["l"].items()}),
        frozenset(raw["x"]),
    )


class ConnectionStore:
    def __init__(
        self,
        store: SlidingConnectionStore,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._clock_ms = clock_ms
        # Per process, by design: a cache of immutable snapshots (never stale: each pos is still
        # checked against the database), so it needs no sharing between workers.
        self._cache: OrderedDict[tuple[ConnKey, int, int], Snapshot] = OrderedDict()

    async def start(self, user_id: str, device_id: str, conn_id: str) -> Connection:
        """A new connection (a request without `pos`), replacing any of that conn_id."""
        conn = Connection((user_id, device_id, conn_id), secrets.randbits(52))
        now = self._clock_ms()
        await self._store.start(conn.key, conn.nonce, now, MAX_PER_DEVICE, now - EXPIRY_MS)
        return conn

    async def resume(
        self, user_id: str, device_id: str, conn_id: str, pos: str
    ) -> tuple[Connection, int, Snapshot]:
        """The connection and the snapshot `pos` names, or M_UNKNOWN_POS."""
        _, nonce, seq = _pos_parts(pos)
        key = (user_id, device_id, conn_id)
        cached = self._cache.get((key, nonce, seq))
        found, data = await self._store.load(key, nonce, seq, with_data=cached is None)
        if not found:
            self._cache.pop((key, nonce, seq), None)
            raise unknown_pos()
        if cached is None:
            try:
                cached = decode_snapshot(data)
            except (ValueError, KeyError, IndexError, TypeError, MatrixError):
                raise unknown_pos("Stored connection state unreadable") from None
            self._remember((key, nonce, seq), cached)
        else:
            self._cache.move_to_end((key, nonce, seq))
        return Connection(key, nonce), seq, cached

    async def record(self, conn: Connection, base_seq: int | None, snapshot: Snapshot) -> str:
        """Store the snapshot of a response built from `base_seq`'s; returns its pos.
        Snapshots older than the base are dropped: the client has processed the base."""
        seq = await self._store.save(
            conn.key,
            conn.nonce,
            encode_snapshot(snapshot),
            base_seq,
            MAX_SNAPSHOTS,
            self._clock_ms(),
        )
        if seq is None:
            # The connection was replaced or dropped meanwhile: this request is still
            # answered, and its pos is unknown on the next one (the client starts over).
            seq = 0
        else:
            self._remember((conn.key, conn.nonce, seq), snapshot)
        return SyncToken(
            snapshot.token.events,
            MappingProxyType({CONN_STREAM: conn.nonce, SEQ_STREAM: seq}),
        ).encode()

    def _remember(self, key: tuple[ConnKey, int, int], snapshot: Snapshot) -> None:
        self._cache[key] = snapshot
        while len(self._cache) > CACHED_SNAPSHOTS:
            self._cache.popitem(last=False)

    async def count(self) -> int:
        """Stored connections (all processes)."""
        return await self._store.count()

    async def forget_device(self, user_id: str, device_id: str) -> None:
        """A device logged out: its connections go."""
        await self._store.forget_device(user_id, device_id)
        for cached in [k for k in self._cache if k[0][0] == user_id and k[0][1] == device_id]:
            del self._cache[cached]
