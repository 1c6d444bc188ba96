"""Migration event_graph on a database with events: auth edges read out of the stored
PDUs (both auth_events formats) and the current-state-delta stream rebuilt from the
accepted state events, on both engines."""

from __future__ import annotations

from pathlib import Path

import orjson

from starling.storage.migrator import apply_migrations, load_migrations
from tests.support.dbfixtures import make_test_database


async def test_existing_events_get_auth_edges_and_state_deltas(engine: str, tmp_path: Path) -> None:
    async with make_test_database(engine, tmp_path, migrate=False) as db:
        migrations = load_migrations(db.dialect)
        index = next(i for i, m in enumerate(migrations) if m.name == "event_graph")
        await apply_migrations(db, migrations[:index])
        rows = [
            # (event_id, room, stream, type, state_key, auth_events, rejected, replaces)
            ("$c", "!v1", 1, "m.room.create", "", [], None, None),
            ("$m", "!v1", 2, "m.room.member", "@a:x", [["$c", {"sha256": "h"}]], None, None),
            ("$t", "!v1", 3, "m.room.topic", "", [["$c", {}], ["$m", {}]], None, None),
            ("$r", "!v1", 4, "m.room.topic", "", ["$c"], "auth", "$t"),
            ("$msg", "!v10", 5, "m.room.message", None, ["$c10", "$m10"], None, None),
        ]
        async with db.transaction() as txn:
            for room, version in (("!v1", "1"), ("!v10", "10")):
                await txn.execute(
                    "INSERT INTO rooms (room_id, room_version, creator, created_ts)"
                    " VALUES (?, ?, '@a:x', 0)",
                    room,
                    version,
                )
            for eid, room, stream, etype, skey, auth, rejected, replaces in rows:
                pdu = {"type": etype, "auth_events": auth, "room_id": room}
                await txn.execute(
                    "INSERT INTO events (event_id, room_id, stream_ordering, depth, type,"
                    " state_key, sender, origin_server_ts, json, rejected_reason, replaces_state)"
                    " VALUES (?, ?, ?, 1, ?, ?, '@a:x', 0, ?, ?, ?)",
                    eid,
                    room,
                    stream,
                    etype,
                    skey,
                    orjson.dumps(pdu).decode(),
                    rejected,
                    replaces,
                )
        await apply_migrations(db, migrations)
        edges = await db.fetch_all("SELECT event_id, auth_event_id FROM event_auth")
        assert sorted((r[0], r[1]) for r in edges) == [
            ("$m", "$c"),
            ("$msg", "$c10"),
            ("$msg", "$m10"),
            ("$r", "$c"),
            ("$t", "$c"),
            ("$t", "$m"),
        ]
        deltas = await db.fetch_all(
            "SELECT stream_id, type, state_key, event_id, prev_event_id"
            " FROM current_state_delta_stream ORDER BY stream_id"
        )
        # The rejected topic never changed the state; the message is not state.
        assert [tuple(r) for r in deltas] == [
            (1, "m.room.create", "", "$c", None),
            (2, "m.room.member", "@a:x", "$m", None),
            (3, "m.room.topic", "", "$t", None),
        ]


async def test_existing_outliers_get_prev_edges(engine: str, tmp_path: Path) -> None:
    """Migration outlier_prev_edges: outliers stored before it get their prev edges (both
    prev_events formats); timeline events keep the ones they had."""
    async with make_test_database(engine, tmp_path, migrate=False) as db:
        migrations = load_migrations(db.dialect)
        index = next(i for i, m in enumerate(migrations) if m.name == "outlier_prev_edges")
        await apply_migrations(db, migrations[:index])
        rows = [
            # (event_id, room, stream, prev_events, outlier)
            ("$o1", "!v1", None, [["$p1", {"sha256": "h"}], ["$p2", {}]], True),
            ("$o10", "!v10", None, ["$p10"], True),
            ("$first", "!v10", None, [], True),
            ("$t", "!v10", 1, ["$o10"], False),
        ]
        async with db.transaction() as txn:
            for room, version in (("!v1", "1"), ("!v10", "10")):
                await txn.execute(
                    "INSERT INTO rooms (room_id, room_version, creator, created_ts)"
                    " VALUES (?, ?, '@a:x', 0)",
                    room,
                    version,
                )
            for eid, room, stream, prev, outlier in rows:
                pdu = {"type": "m.room.message", "prev_events": prev, "room_id": room}
                await txn.execute(
                    "INSERT INTO events (event_id, room_id, stream_ordering, depth, type,"
                    " sender, origin_server_ts, json, outlier)"
                    " VALUES (?, ?, ?, 1, 'm.room.message', '@a:x', 0, ?, ?)",
                    eid,
                    room,
                    stream,
                    orjson.dumps(pdu).decode(),
                    outlier,
                )
        await apply_migrations(db, migrations)
        edges = await db.fetch_all(
            "SELECT e.event_id, ed.prev_event_id FROM event_edges ed"
            " JOIN events e ON e.event_nid = ed.event_nid"
        )
        assert sorted((r[0], r[1]) for r in edges) == [
            ("$o1", "$p1"),
            ("$o1", "$p2"),
            ("$o10", "$p10"),
        ]
