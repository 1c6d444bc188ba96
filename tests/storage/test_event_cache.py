"""The event cache (EventStore) never keeps an event older than the database's row: a read
that began before a change of the row (a redaction) and returns after it is answered,
but not cached. (SyTest's "Can receive redactions from regular users over federation in
room version 4" once saw the message unredacted in /messages: an initial /sync's read of
the room's timeline had begun before the redaction's commit and cached the old row after
the redaction had dropped it.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import Harness
from tests.support.holds import Hold, hold_first_call

V3 = "/_matrix/client/v3"


def _hold_read_naming(hs: Harness, monkeypatch: pytest.MonkeyPatch, name: str) -> Hold:
    """The next database read whose arguments name `name` is held after its query."""
    return hold_first_call(
        monkeypatch, hs.services.db, "fetch_all", lambda sql, *args: name in repr(args)
    )


async def _redact(hs: Harness, token: str, room_id: str, event_id: str) -> None:
    status, body = await hs.request(
        "PUT", f"{V3}/rooms/{room_id}/redact/{event_id}/r1", token, {"reason": "no"}
    )
    assert status == 200, body


async def _assert_redacted_now(hs: Harness, event_id: str) -> None:
    now = await hs.services.event_store.get_event(event_id)
    assert now is not None and now.meta.redacted_by is not None
    assert "body" not in now.event.content


async def _uncached_message(hs: Harness) -> tuple[str, str, str]:
    """(token, room, event): a message the event cache does not hold (the next read of
    it asks the database)."""
    _, tok = await hs.register("alice")
    room_id = await hs.create_room(tok)
    event_id = await hs.send_message(tok, room_id, "secret")
    hs.services.event_store.invalidate(event_id)
    return tok, room_id, event_id


async def test_a_read_from_before_a_redaction_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok, room_id, event_id = await _uncached_message(hs)
    store = hs.services.event_store
    hold = _hold_read_naming(hs, monkeypatch, event_id)

    early = asyncio.ensure_future(store.get_event(event_id))
    await hold.wait_reached()
    await _redact(hs, tok, room_id, event_id)
    hold.release()
    stale = await asyncio.wait_for(early, 10)
    assert stale is not None and stale.event.content.get("body") == "secret"
    await _assert_redacted_now(hs, event_id)


async def test_a_timeline_read_from_before_a_redaction_is_not_cached(
    hs: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the timeline reads (/sync, /messages), which fill the cache too."""
    tok, room_id, event_id = await _uncached_message(hs)
    store = hs.services.event_store
    upto = hs.services.persister.current_position
    hold = _hold_read_naming(hs, monkeypatch, room_id)

    early = asyncio.ensure_future(store.get_room_events_between(room_id, None, upto, 50))
    await hold.wait_reached()
    await _redact(hs, tok, room_id, event_id)
    hold.release()
    rows = await asyncio.wait_for(early, 10)
    assert event_id in [pair.event.event_id for pair in rows]
    await _assert_redacted_now(hs, event_id)
