"""The federation benchmark's fake remote (benchmarks/federation_bench.py) answers what a
receiver pulls to fill a gap from its DAG: /state (the state before an event, full events,
with its auth chain) and /backfill (the given events and those before them, bounded), and
counts what it could not answer."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from benchmarks.federation_bench import FakeRemote
from tests.federation.harness import make_test_pki


async def test_state_backfill_and_misses(tmp_path: Path) -> None:
    remote = FakeRemote(make_test_pki(tmp_path / "pki"), name="remote.test")
    room_id = remote.host_room(3)
    dag = remote.rooms[room_id]
    sender = remote.identity.user("creator")
    first = dag.message(sender, "one")
    second = dag.message(sender, "two")
    last_join = dag.events[first.prev_event_ids[0]]
    async with TestClient(TestServer(remote.app())) as client:
        # the state before the last join lacks that join; the state at a message has it
        resp = await client.get(
            f"/_matrix/federation/v1/state/{room_id}", params={"event_id": last_join.event_id}
        )
        assert resp.status == 200
        body = await resp.json()
        keys = {(p["type"], p["state_key"]) for p in body["pdus"]}
        assert ("m.room.member", last_join.sender) not in keys
        assert ("m.room.create", "") in keys
        chain_types = {p["type"] for p in body["auth_chain"]}
        assert "m.room.create" in chain_types and "m.room.power_levels" in chain_types
        resp = await client.get(
            f"/_matrix/federation/v1/state/{room_id}", params={"event_id": second.event_id}
        )
        body = await resp.json()
        assert any(
            p["type"] == "m.room.member" and p["state_key"] == last_join.sender
            for p in body["pdus"]
        )
        assert not any(p["type"] == "m.room.message" for p in body["pdus"])

        resp = await client.get(
            f"/_matrix/federation/v1/backfill/{room_id}",
            params={"v": second.event_id, "limit": "2"},
        )
        assert resp.status == 200
        bodies = [p["content"].get("body") for p in (await resp.json())["pdus"]]
        assert bodies == ["two", "one"]

        bad = await client.get(f"/_matrix/federation/v1/backfill/{room_id}?limit=x")
        assert bad.status == 400
        missing = await client.get(
            f"/_matrix/federation/v1/state/{room_id}", params={"event_id": "$nope"}
        )
        assert missing.status == 404
    assert remote.pulls["state"] == 3 and remote.pulls["backfill"] == 2
    assert sum(remote.misses.values()) == 2
