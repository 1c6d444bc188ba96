"""Sliding sync's per-connection state, stored in the database (both engines): pos round
trips, bounds, what makes a pos unknown, the stored form of a snapshot, and a restart
that keeps every pos known."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from starling.errors import MatrixError
from starling.storage.database import Database
from starling.storage.sliding_connections import SlidingConnectionStore
from starling.sync.sliding.connections import (
    MAX_PER_DEVICE,
    MAX_SNAPSHOTS,
    ConnectionStore,
    RoomSent,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from starling.sync.sliding.request import CombinedConfig, RequiredState, StateRule
from starling.sync.tokens import SyncToken, parse_room_position
from tests.support.harness import make_harness
from tests.sync.test_sliding_sync import all_rooms, bodies, ss


def snap(events: int) -> Snapshot:
    return Snapshot(SyncToken(events), MappingProxyType({}), MappingProxyType({}))


async def unknown(store: ConnectionStore, user: str, device: str, conn: str, pos: str) -> None:
    with pytest.raises(MatrixError) as e:
        await store.resume(user, device, conn, pos)
    assert e.value.errcode == "M_UNKNOWN_POS"


async def test_pos_round_trip_and_use_in_messages(database: Database) -> None:
    store = ConnectionStore(SlidingConnectionStore(database))
    conn = await store.start("@a:x", "D", "")
    pos = await store.record(conn, None, snap(42))
    found, _seq, snapshot = await store.resume("@a:x", "D", "", pos)
    assert found == conn and snapshot.token.events == 42
    # /messages and /relations accept a pos (its events position).
    assert parse_room_position(pos) == 42
    await unknown(store, "@b:x", "D", "", pos)
    await unknown(store, "@a:x", "E", "", pos)
    await unknown(store, "@a:x", "D", "other", pos)
    await unknown(store, "@a:x", "D", "", "s42")
    await unknown(store, "@a:x", "D", "", "not a token")
    # Another process (its own cache, the same database) knows the pos too.
    other = ConnectionStore(SlidingConnectionStore(database))
    assert (await other.resume("@a:x", "D", "", pos))[2].token.events == 42


async def test_new_connection_replaces_and_old_snapshots_go(database: Database) -> None:
    db_store = SlidingConnectionStore(database)
    store = ConnectionStore(db_store)
    conn = await store.start("@a:x", "D", "c")
    first = await store.record(conn, None, snap(1))
    _, seq1, _ = await store.resume("@a:x", "D", "c", first)
    second = await store.record(conn, seq1, snap(2))
    _, seq2, _ = await store.resume("@a:x", "D", "c", second)
    await store.record(conn, seq2, snap(3))
    # Using `second` confirmed it: `first` is gone.
    await unknown(store, "@a:x", "D", "c", first)
    # Retries of one pos never grow the snapshots past the bound.
    for _ in range(3 * MAX_SNAPSHOTS):
        await store.record(conn, seq2, snap(4))
    stored = await database.fetch_val("SELECT COUNT(*) FROM sliding_sync_snapshots")
    assert int(stored) <= MAX_SNAPSHOTS
    await store.resume("@a:x", "D", "c", second)
    # A request without pos starts over: every older pos of that conn_id is unknown.
    await store.start("@a:x", "D", "c")
    await unknown(store, "@a:x", "D", "c", second)


async def test_connections_per_device_are_bounded_and_forgotten_on_logout(
    database: Database,
) -> None:
    clock = [1_000]
    store = ConnectionStore(SlidingConnectionStore(database), clock_ms=lambda: clock[0])
    positions = []
    for i in range(MAX_PER_DEVICE + 1):
        clock[0] += 1
        conn = await store.start("@a:x", "D", f"c{i}")
        positions.append(await store.record(conn, None, snap(i)))
    assert await store.count() == MAX_PER_DEVICE
    await unknown(store, "@a:x", "D", "c0", positions[0])
    await store.resume("@a:x", "D", "c1", positions[1])
    await store.forget_device("@a:x", "D")
    assert await store.count() == 0
    await unknown(store, "@a:x", "D", "c1", positions[1])


def test_snapshot_stored_form_round_trips() -> None:
    state = RequiredState(
        frozenset({StateRule("m.room.name", ""), StateRule(None, None)}),
        frozenset({StateRule("m.room.member", None)}),
        lazy_members=True,
    )
    config = CombinedConfig(10, frozenset({state, RequiredState()}), lazy_members=True)
    rooms = {
        f"!r{i}:x": RoomSent(
            position=100 + i,
            membership="join" if i else "invite",
            membership_event=f"$m{i}" if i else None,
            config=config if i % 2 else CombinedConfig(1, frozenset()),
            lazy_members=MappingProxyType({"@b:x": "$b"}) if i == 3 else MappingProxyType({}),
            timeline_depth=i,
        )
        for i in range(5)
    }
    snapshot = Snapshot(
        SyncToken(7, MappingProxyType({"typing": 3, "to_device": 9})),
        MappingProxyType(rooms),
        MappingProxyType({"all": 5}),
        frozenset({"!r1:x"}),
    )
    decoded = decode_snapshot(encode_snapshot(snapshot))
    assert decoded.token == snapshot.token
    assert dict(decoded.rooms) == rooms
    assert dict(decoded.list_counts) == {"all": 5}
    assert decoded.extension_rooms == snapshot.extension_rooms


async def test_a_restart_keeps_every_pos_known(database: Database, tmp_path: Path) -> None:
    """A pos from before a restart (a new service graph on the same database) goes on
    incrementally: only what changed is sent, never M_UNKNOWN_POS."""
    async with make_harness(database, tmp_path) as hs:
        _, tok = await hs.register("alice")
        room = await hs.create_room(tok, name="Kept")
        await hs.send_message(tok, room, "before")
        first = await ss(hs, tok, all_rooms(limit=5))
        assert bodies(first["rooms"][room]) == ["before"]
    async with make_harness(database, tmp_path) as hs:
        # The access token is stored: the same one works after the restart.
        quiet = await ss(hs, tok, all_rooms(limit=5), pos=first["pos"], timeout=0)
        assert quiet["rooms"] == {}
        await hs.send_message(tok, room, "after")
        later = await ss(hs, tok, all_rooms(limit=5), pos=quiet["pos"])
        assert bodies(later["rooms"][room]) == ["after"]
        assert "initial" not in later["rooms"][room]
