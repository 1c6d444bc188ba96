"""An incremental /sync's timeline comes from the events remembered per room
(EventStore._recent) when they cover the range: the same answer as the database's, on
both engines, including redactions, limits, ranges older than what is remembered, and
after a purge."""

from __future__ import annotations

from typing import Any

import pytest

from starling.storage.events import MAX_RECENT, EventStore, StoredEvent
from tests.support.harness import UNLIMITED_ROOM_RATES, Harness

V3 = "/_matrix/client/v3"


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return dict(UNLIMITED_ROOM_RATES)


def _ids(found: dict[str, list[StoredEvent]]) -> dict[str, list[tuple[str, Any]]]:
    return {
        room: [(p.event.event_id, p.event.content) for p in pairs] for room, pairs in found.items()
    }


async def test_remembered_timelines_answer_as_the_database(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    store = hs.services.event_store
    fresh = EventStore(hs.services.db)  # remembers nothing: always the database
    rooms = [await hs.create_room(tok, preset="public_chat") for _ in range(2)]
    sent = [await hs.send_message(tok, rooms[i % 2], f"m{i}") for i in range(6)]
    status, _ = await hs.request(
        "PUT", f"{V3}/rooms/{rooms[0]}/redact/{sent[2]}/r1", tok, {"reason": "no"}
    )
    assert status == 200
    latest = hs.services.persister.current_position
    positions = {}
    for eid in sent:
        got = await store.get_event(eid)
        assert got is not None and got.meta.stream_ordering is not None
        positions[eid] = got.meta.stream_ordering
    cases = [
        [(rooms[0], positions[sent[0]] - 1, latest), (rooms[1], positions[sent[1]], latest)],
        [(rooms[0], positions[sent[4]], latest), (rooms[1], positions[sent[5]], latest)],
        [(rooms[0], None, latest)],  # an initial sync's range: the database
        [(rooms[1], 0, positions[sent[3]])],  # older than what is remembered
    ]
    for ranges in cases:
        for limit in (1, 2, 50):
            mine = await store.get_recent_events_for_ranges(ranges, limit)
            theirs = await fresh.get_recent_events_for_ranges(ranges, limit)
            assert _ids(mine) == _ids(theirs), (ranges, limit)
    # The redacted message is served redacted from memory too.
    redacted = await store.get_recent_events_for_ranges(
        [(rooms[0], positions[sent[0]], latest)], 50
    )
    bodies = {p.event.event_id: p.event.content for p in redacted[rooms[0]]}
    assert bodies[sent[2]] == {}
    # After a history purge's cache drop, the database answers again.
    store.forget_events(rooms[1], [])
    ranges = [(rooms[1], positions[sent[1]] - 1, latest)]
    assert _ids(await store.get_recent_events_for_ranges(ranges, 50)) == _ids(
        await fresh.get_recent_events_for_ranges(ranges, 50)
    )


async def test_only_the_newest_are_remembered(hs: Harness) -> None:
    _, tok = await hs.register("alice")
    room = await hs.create_room(tok, preset="public_chat")
    store = hs.services.event_store
    fresh = EventStore(hs.services.db)
    sent = [await hs.send_message(tok, room, f"m{i}") for i in range(MAX_RECENT + 5)]
    first = await store.get_event(sent[0])
    assert first is not None and first.meta.stream_ordering is not None
    latest = hs.services.persister.current_position
    ranges = [(room, first.meta.stream_ordering - 1, latest)]
    mine = await store.get_recent_events_for_ranges(ranges, 100)
    theirs = await fresh.get_recent_events_for_ranges(ranges, 100)
    assert _ids(mine) == _ids(theirs)
    assert [e for e, _ in _ids(mine)[room]] == list(reversed(sent))
