"""The event cache (EventStore) never keeps an event older than the database's row: a read
that began before a change of the row (a redaction) and returns after it is answered,
but not cached. (SyTest's "Can receive redactions from regular users over federation in
room version 4" once saw the message unredacted in /messages: an initial /sync's read of
the room's timeline had begun before the redaction's commit and cached the old row after
the redaction had dropped it.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"


async def _held_read(
    hs: Harness, monkeypatch: pytest.MonkeyPatch, event_id: str
) -> tuple[asyncio.Event, asyncio.Event]:
    """The next `fetch_all` that names `event_id` runs its query, then waits for the
    second event before returning (the first is set when its rows are in)."""
    db = hs.services.db
    real = db.fetch_all
    read, release = asyncio.Event(), asyncio.Event()

    async def fetch_all(sql: str, *args: Any) -> Any:
        rows = await real(sql, *args)
        if not read.is_set() and event_id in repr(args):
            read.set()
            await release.wait()
        return rows

    monkeypatch.setattr(db, "fetch_all", fetch_all)
    return read, release


async def _redact(hs: Harness, token: str, room_id: str, event_id: str) -> None:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{event_id}/r1", token, {"reason": "no"}
    )
    assert status == 200, body


async def test_a_read_from_before_a_redaction_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_id, "secret")
    store = hs.services.event_store
    store.invalidate(event_id)  # the next read asks the database
    read, release = await _held_read(hs, monkeypatch, event_id)

    early = asyncio.ensure_future(store.get_event(event_id))
    await asyncio.wait_for(read.wait(), 10)
    await _redact(hs, tok, room_id, event_id)
    release.set()
    stale = await asyncio.wait_for(early, 10)
    assert stale is not None and stale.event.content.get("body") == "secret"

    now = await store.get_event(event_id)
    assert now is not None and now.meta.redacted_by is not None
    assert "body" not in now.event.content


async def test_a_timeline_read_from_before_a_redaction_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the timeline reads (/sync, /messages), which fill the cache too."""
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_id, "secret")
    store = hs.services.event_store
    store.invalidate(event_id)
    upto = hs.services.persister.current_position
    read, release = await _held_read(hs, monkeypatch, room_id)

    early = asyncio.ensure_future(store.get_room_events_between(room_id, None, upto, 50))
    await asyncio.wait_for(read.wait(), 10)
    await _redact(hs, tok, room_id, event_id)
    release.set()
    rows = await asyncio.wait_for(early, 10)
    assert event_id in [pair.event.event_id for pair in rows]

    now = await store.get_event(event_id)
    assert now is not None and now.meta.redacted_by is not None
    assert "body" not in now.event.content
