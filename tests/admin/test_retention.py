"""Message retention policies (Synapse's `retention`, m.room.retention): the purge job
deletes expired history within the allowed lifetimes; configuration checks. Both engines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from starling.config import ConfigError, RetentionPurgeJob
from tests.admin.conftest import CONFIG
from tests.support.harness import Harness, make_test_config

C = "/_matrix/client/v3"
DAY_MS = 86_400_000


@pytest.fixture
def hs_config() -> dict[str, Any]:
    return {
        **CONFIG,
        "retention": {
            "enabled": True,
            "allowed_lifetime_max": "1d",
            "purge_jobs": [{"shortest_max_lifetime": "1s", "interval": "1d"}],
        },
    }


async def _bodies(hs: Harness, room_id: str) -> list[str]:
    rows = await hs.services.db.fetch_all(
        "SELECT json FROM events WHERE room_id = ? AND type = 'm.room.message'"
        " ORDER BY stream_ordering",
        room_id,
    )
    return [orjson.loads(r[0])["content"]["body"] for r in rows]


async def test_retention_purge_job(hs: Harness) -> None:
    _, token = await hs.register("alice")
    short = await hs.create_room(token)
    long = await hs.create_room(token)
    plain = await hs.create_room(token)
    for room, lifetime in ((short, 60_000), (long, 3650 * DAY_MS)):
        status, resp = await hs.request(
            "PUT", f"{C}/rooms/{room}/state/m.room.retention/", token, {"max_lifetime": lifetime}
        )
        assert status == 200, resp
    for room in (short, long, plain):
        for text in ("one", "two", "three"):
            await hs.send_message(token, room, text)
    history = hs.services.admin_history
    job = RetentionPurgeJob(shortest_max_lifetime="1s")

    # Nothing has expired yet.
    assert await history.run_retention_job(job) == 0
    # Two minutes later: the 60 s room loses all but its newest expired message (Synapse
    # never purges the last event before the cut-off); state stays.
    now = time.time()
    history._clock = lambda: now + 120
    assert await history.run_retention_job(job) == 2
    assert await _bodies(hs, short) == ["three"]
    assert await _bodies(hs, long) == ["one", "two", "three"]
    status, resp = await hs.request("GET", f"{C}/rooms/{short}/state/m.room.retention/", token)
    assert (status, resp) == (200, {"max_lifetime": 60_000})
    # Two days later the ten-year room is held to allowed_lifetime_max (1 d); the room
    # without a policy keeps everything (no default policy).
    history._clock = lambda: now + 2 * 86_400
    assert await history.run_retention_job(job) == 2
    assert await _bodies(hs, long) == ["three"]
    assert await _bodies(hs, plain) == ["one", "two", "three"]
    # A job whose range leaves the rooms out does nothing.
    await hs.send_message(token, short, "four")
    history._clock = lambda: now + 3 * 86_400
    assert await history.run_retention_job(RetentionPurgeJob(longest_max_lifetime="1s")) == 0
    assert await _bodies(hs, short) == ["three", "four"]
    for bad in ("soon", 0, -5, True):
        assert history.effective_lifetime({"max_lifetime": bad}) is None


@pytest.mark.parametrize(
    "retention",
    [
        {"default_policy": {"max_lifetime": "soon"}},
        {"default_policy": {"min_lifetime": "2d", "max_lifetime": "1d"}},
        {"allowed_lifetime_min": "0"},
        {"purge_jobs": [{"interval": "-1d"}]},
        {"enabled": True, "purge_jobs": []},
    ],
)
def test_retention_config_errors(tmp_path: Path, retention: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="retention"):
        make_test_config(tmp_path, retention=retention)


async def test_expired_messages_are_hidden_before_the_purge(hs: Harness) -> None:
    # As Synapse: a message older than its room's lifetime is not shown to clients even
    # while a purge job has not deleted it yet; state events stay visible.
    _, token = await hs.register("alice")
    room = await hs.create_room(token)
    status, _ = await hs.request(
        "PUT", f"{C}/rooms/{room}/state/m.room.retention/", token, {"max_lifetime": 60_000}
    )
    assert status == 200
    event_id = await hs.send_message(token, room, "ephemeral")

    async def bodies() -> list[str]:
        status, resp = await hs.request("GET", f"{C}/rooms/{room}/messages?dir=b&limit=50", token)
        assert status == 200, resp
        return [e["content"].get("body") for e in resp["chunk"] if e["type"] == "m.room.message"]

    assert await bodies() == ["ephemeral"]
    window = hs.services.room_history._visibility._retention
    assert window is not None
    now = time.time()
    window._clock = lambda: now + 120
    assert await bodies() == []
    status, _ = await hs.request("GET", f"{C}/rooms/{room}/event/{event_id}", token)
    assert status == 404
    status, resp = await hs.request("GET", f"{C}/rooms/{room}/messages?dir=b&limit=50", token)
    assert any(e["type"] == "m.room.create" for e in resp["chunk"])
