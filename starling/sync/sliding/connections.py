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
later one. State lives in this process's memory: after a restart every `pos` is unknown
and clients start a new connection, which the MSC allows. (A second process would need
this in the database or sticky routing by device.)

Bounded: at most `MAX_PER_DEVICE` connections per device and `MAX_CONNECTIONS` in all
(least recently used dropped first), at most `MAX_SNAPSHOTS` snapshots per connection.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from starling.errors import MatrixError
from starling.sync.sliding.request import CombinedConfig
from starling.sync.tokens import SyncToken

MAX_PER_DEVICE = 10
MAX_CONNECTIONS = 20_000
MAX_SNAPSHOTS = 4
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


@dataclass
class Connection:
    key: ConnKey
    nonce: int
    snapshots: OrderedDict[int, Snapshot] = field(default_factory=OrderedDict)
    next_seq: int = 1


def _pos_parts(pos: str) -> tuple[int, int, int]:
    try:
        token = SyncToken.parse(pos)
    except MatrixError:
        raise unknown_pos("Malformed pos") from None
    nonce = token.streams.get(CONN_STREAM)
    seq = token.streams.get(SEQ_STREAM)
    if nonce is None or seq is None:
        raise unknown_pos("Not a sliding sync pos")
    return token.events, nonce, seq


class ConnectionStore:
    def __init__(self) -> None:
        self._conns: OrderedDict[ConnKey, Connection] = OrderedDict()
        self._per_device: dict[tuple[str, str], OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def start(self, user_id: str, device_id: str, conn_id: str) -> Connection:
        """A new connection (a request without `pos`), replacing any of that conn_id."""
        key = (user_id, device_id, conn_id)
        self._drop(key)
        conn = Connection(key, secrets.randbits(52))
        self._conns[key] = conn
        ids = self._per_device.setdefault((user_id, device_id), OrderedDict())
        ids[conn_id] = None
        while len(ids) > MAX_PER_DEVICE:
            oldest = next(iter(ids))
            self._drop((user_id, device_id, oldest))
        while len(self._conns) > MAX_CONNECTIONS:
            self._drop(next(iter(self._conns)))
        return conn

    def resume(
        self, user_id: str, device_id: str, conn_id: str, pos: str
    ) -> tuple[Connection, int, Snapshot]:
        """The connection and the snapshot `pos` names, or M_UNKNOWN_POS."""
        _, nonce, seq = _pos_parts(pos)
        key = (user_id, device_id, conn_id)
        conn = self._conns.get(key)
        if conn is None or conn.nonce != nonce or seq not in conn.snapshots:
            raise unknown_pos()
        self._conns.move_to_end(key)
        ids = self._per_device.get((user_id, device_id))
        if ids is not None and conn_id in ids:
            ids.move_to_end(conn_id)
        return conn, seq, conn.snapshots[seq]

    def record(self, conn: Connection, base_seq: int | None, snapshot: Snapshot) -> str:
        """Store the snapshot of a response built from `base_seq`'s; returns its pos.
        Snapshots older than the base are dropped: the client has processed the base."""
        # (A connection replaced or evicted meanwhile still answers this request; its
        # pos is then unknown to `resume`, which the client learns on its next request.)
        seq = conn.next_seq
        conn.next_seq += 1
        if base_seq is not None:
            for old in [s for s in conn.snapshots if s < base_seq]:
                del conn.snapshots[old]
        conn.snapshots[seq] = snapshot
        while len(conn.snapshots) > MAX_SNAPSHOTS:
            # Keep the base (a retry may still use it) and the newest.
            victim = next(s for s in conn.snapshots if s != base_seq)
            del conn.snapshots[victim]
        return SyncToken(
            snapshot.token.events,
            MappingProxyType({CONN_STREAM: conn.nonce, SEQ_STREAM: seq}),
        ).encode()

    def _drop(self, key: ConnKey) -> None:
        self._conns.pop(key, None)
        ids = self._per_device.get((key[0], key[1]))
        if ids is not None:
            ids.pop(key[2], None)
            if not ids:
                del self._per_device[(key[0], key[1])]

    def forget_device(self, user_id: str, device_id: str) -> None:
        """A device logged out: its connections go."""
        for conn_id in list(self._per_device.get((user_id, device_id), ())):
            self._drop((user_id, device_id, conn_id))
