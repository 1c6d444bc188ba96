"""Delayed events (MSC4140 in the unstable form matrix-js-sdk and Synapse use), on both
engines: scheduling through the send and state PUTs with `org.matrix.msc4140.delay`, the
timer sending them, send/cancel/restart by delay ID (with or without a token, and the
earlier action-in-body form), listing, limits and errors, an event that cannot be sent
when due, and scheduled events surviving a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from starling.storage.database import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
DE = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
DELAY = "org.matrix.msc4140.delay"


@pytest.fixture
async def timer(hs: Harness) -> AsyncIterator[Harness]:
    await hs.services.delayed_events.start()
    try:
        yield hs
    finally:
        await hs.services.delayed_events.stop()


async def ok(
    hs: Harness, method: str, path: str, token: str | None, body: Any = None, **kw: Any
) -> Any:
    status, resp = await hs.request(method, path, token, body, **kw)
    assert status == 200, (path, resp)
    return resp


async def topic(hs: Harness, token: str, room: str) -> str | None:
    status, body = await hs.request("GET", f"{V3}/rooms/{quote(room)}/state/m.room.topic", token)
    return body.get("topic") if status == 200 else None


async def eventually(check: Any, what: str) -> Any:
    for _ in range(300):  # a hang guard of 15 s
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_schedule_send_manage_and_list(timer: Harness) -> None:
    hs = timer
    alice, tok = await hs.register()
    room = await hs.create_room(tok, preset="public_chat")
    send = f"{V3}/rooms/{quote(room)}/send/m.room.message"
    # A message due in 200 ms; the same transaction again schedules nothing new.
    first = await ok(
        hs, "PUT", f"{send}/t1", tok, {"msgtype": "m.text", "body": "later"}, params={DELAY: "200"}
    )
    again = await ok(
        hs, "PUT", f"{send}/t1", tok, {"msgtype": "m.text", "body": "later"}, params={DELAY: "200"}
    )
    assert first == again and set(first) == {"delay_id"}
    # A state event due in an hour.
    state = f"{V3}/rooms/{quote(room)}/state/m.room.topic/"
    hour = await ok(hs, "PUT", state, tok, {"topic": "delayed"}, params={DELAY: "3600000"})
    listed = (await ok(hs, "GET", DE, tok))["delayed_events"]
    assert [e["delay_id"] for e in listed] == [first["delay_id"], hour["delay_id"]]
    assert listed[1]["type"] == "m.room.topic" and listed[1]["state_key"] == ""
    assert listed[1]["delay"] == 3600000 and listed[1]["content"] == {"topic": "delayed"}

    async def sent_message() -> Any:
        done = (await ok(hs, "GET", DE, tok, params={"status": "finalised"}))["delayed_events"]
        return [e for e in done if e["delay_id"] == first["delay_id"] and "event_id" in e]

    [finalised] = await eventually(sent_message, "the delayed message sent")
    status, event = await hs.request(
        "GET", f"{V3}/rooms/{quote(room)}/event/{quote(finalised['event_id'])}", tok
    )
    assert status == 200 and event["content"]["body"] == "later" and event["sender"] == alice

    # restart, then send now without a token (the delay ID is the credential); retries
    # of a send succeed, a cancel after it conflicts.
    await ok(hs, "POST", f"{DE}/{hour['delay_id']}/restart", tok, {})
    await ok(hs, "POST", f"{DE}/{hour['delay_id']}/send", None, {})
    assert await topic(hs, tok, room) == "delayed"
    await ok(hs, "POST", f"{DE}/{hour['delay_id']}/send", None, {})
    status, err = await hs.request("POST", f"{DE}/{hour['delay_id']}/cancel", None, {})
    assert (status, err["errcode"]) == (409, "M_UNKNOWN")

    # Cancel in the earlier form (the action in the body); it is never sent.
    gone = await ok(hs, "PUT", state, tok, {"topic": "never"}, params={DELAY: "150"})
    await ok(hs, "POST", f"{DE}/{gone['delay_id']}", None, {"action": "cancel"})
    await ok(hs, "POST", f"{DE}/{gone['delay_id']}", None, {"action": "cancel"})  # a retry
    status, err = await hs.request("POST", f"{DE}/{gone['delay_id']}/restart", tok, {})
    assert status == 409
    await asyncio.sleep(0.3)
    assert await topic(hs, tok, room) == "delayed"
    assert (await ok(hs, "GET", DE, tok))["delayed_events"] == []

    # A redaction is never delayed: sent at once, whatever the delay asks.
    target = await ok(hs, "PUT", f"{send}/t2", tok, {"msgtype": "m.text", "body": "oops"})
    redaction = await ok(
        hs,
        "PUT",
        f"{V3}/rooms/{quote(room)}/send/m.room.redaction/t3",
        tok,
        {"redacts": target["event_id"]},
        params={DELAY: "3600000"},
    )
    assert set(redaction) == {"event_id"}
    got = await ok(hs, "GET", f"{V3}/rooms/{quote(room)}/event/{quote(target['event_id'])}", tok)
    assert got["content"] == {} and "redacted_because" in got["unsigned"]
    assert (await ok(hs, "GET", DE, tok))["delayed_events"] == []

    # Errors.
    for value, code in (
        ("0", "M_INVALID_PARAM"),
        ("x", "M_INVALID_PARAM"),
        ("86400001", "M_MAX_DELAY_EXCEEDED"),
    ):
        status, err = await hs.request("PUT", state, tok, {"topic": "t"}, params={DELAY: value})
        assert status == 400 and err["errcode"] == code, (value, err)
        if code == "M_MAX_DELAY_EXCEEDED":
            assert err["max_delay"] == 86400000
    status, err = await hs.request("POST", f"{DE}/nope/send", None, {})
    assert (status, err["errcode"]) == (404, "M_NOT_FOUND")
    status, err = await hs.request("POST", f"{DE}/{gone['delay_id']}/explode", None, {})
    assert (status, err["errcode"]) == (400, "M_INVALID_PARAM")
    status, err = await hs.request("GET", DE, None)
    assert status == 401
    status, versions = await hs.request("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc4140"] is True


async def test_not_sendable_when_due_is_cancelled_with_the_error(timer: Harness) -> None:
    hs = timer
    _, atok = await hs.register()
    _, btok = await hs.register()
    room = await hs.create_room(atok, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{quote(room)}", btok, {})
    # bob may not set the topic in a public_chat room (power 50 needed): due, it fails.
    await ok(
        hs,
        "PUT",
        f"{V3}/rooms/{quote(room)}/state/m.room.topic/",
        btok,
        {"topic": "bob's"},
        params={DELAY: "100"},
    )

    async def cancelled() -> Any:
        done = (await ok(hs, "GET", DE, btok, params={"status": "finalised"}))["delayed_events"]
        return [e for e in done if "error" in e]

    [event] = await eventually(cancelled, "the delayed event cancelled")
    assert event["error"]["errcode"] == "M_FORBIDDEN" and "event_id" not in event


async def test_scheduled_events_survive_a_restart(database: Database, tmp_path: Path) -> None:
    async with make_harness(database, tmp_path) as hs:
        _, tok = await hs.register("alice")
        room = await hs.create_room(tok, preset="public_chat")
        await ok(
            hs,
            "PUT",
            f"{V3}/rooms/{quote(room)}/state/m.room.topic/",
            tok,
            {"topic": "after the restart"},
            params={DELAY: "300"},
        )
    async with make_harness(database, tmp_path) as hs:
        await hs.services.delayed_events.start()
        try:

            async def arrived() -> Any:
                return await topic(hs, tok, room) == "after the restart"

            await eventually(arrived, "the delayed topic after the restart")
        finally:
            await hs.services.delayed_events.stop()
