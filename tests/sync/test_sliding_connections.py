"""Sliding sync's per-connection state (pure, no database): pos round trips, bounds,
and what makes a pos unknown."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from starling.errors import MatrixError
from starling.sync.sliding.connections import (
    MAX_PER_DEVICE,
    MAX_SNAPSHOTS,
    ConnectionStore,
    Snapshot,
)
from starling.sync.tokens import SyncToken, parse_room_position


def snap(events: int) -> Snapshot:
    return Snapshot(SyncToken(events), MappingProxyType({}), MappingProxyType({}))


def unknown(store: ConnectionStore, user: str, device: str, conn: str, pos: str) -> None:
    with pytest.raises(MatrixError) as e:
        store.resume(user, device, conn, pos)
    assert e.value.errcode == "M_UNKNOWN_POS"


def test_pos_round_trip_and_use_in_messages() -> None:
    store = ConnectionStore()
    conn = store.start("@a:x", "D", "")
    pos = store.record(conn, None, snap(42))
    found, _seq, snapshot = store.resume("@a:x", "D", "", pos)
    assert found is conn and snapshot.token.events == 42
    # /messages and /relations accept a pos (its events position).
    assert parse_room_position(pos) == 42
    unknown(store, "@b:x", "D", "", pos)
    unknown(store, "@a:x", "E", "", pos)
    unknown(store, "@a:x", "D", "other", pos)
    unknown(store, "@a:x", "D", "", "s42")
    unknown(store, "@a:x", "D", "", "not a token")


def test_new_connection_replaces_and_old_snapshots_go() -> None:
    store = ConnectionStore()
    conn = store.start("@a:x", "D", "c")
    first = store.record(conn, None, snap(1))
    _, seq1, _ = store.resume("@a:x", "D", "c", first)
    second = store.record(conn, seq1, snap(2))
    _, seq2, _ = store.resume("@a:x", "D", "c", second)
    store.record(conn, seq2, snap(3))
    # Using `second` confirmed it: `first` is gone.
    unknown(store, "@a:x", "D", "c", first)
    # Retries of one pos never grow the snapshots past the bound.
    for _ in range(3 * MAX_SNAPSHOTS):
        store.record(conn, seq2, snap(4))
    assert len(conn.snapshots) <= MAX_SNAPSHOTS
    store.resume("@a:x", "D", "c", second)
    # A request without pos starts over: every older pos of that conn_id is unknown.
    store.start("@a:x", "D", "c")
    unknown(store, "@a:x", "D", "c", second)


def test_connections_per_device_are_bounded_and_forgotten_on_logout() -> None:
    store = ConnectionStore()
    positions = []
    for i in range(MAX_PER_DEVICE + 1):
        conn = store.start("@a:x", "D", f"c{i}")
        positions.append(store.record(conn, None, snap(i)))
    assert len(store) == MAX_PER_DEVICE
    unknown(store, "@a:x", "D", "c0", positions[0])
    store.resume("@a:x", "D", "c1", positions[1])
    store.forget_device("@a:x", "D")
    assert len(store) == 0
    unknown(store, "@a:x", "D", "c1", positions[1])
