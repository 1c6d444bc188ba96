"""Redactions are rate-limited as Synapse does it: a redaction of one's own event spends
`rc_message`; a moderator's redaction of someone else's event spends `rc_admin_redaction`
when it is set (else `rc_message` too)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
_FAST = {"per_second": 1000, "burst_count": 1000}
_THREE = {"per_second": 0.0001, "burst_count": 3}


async def _redact(hs: Harness, token: str, room: str, event_id: str, txn: str) -> int:
    status, _ = await hs.request("PUT", f"{V3}/rooms/{room}/redact/{event_id}/{txn}", token, {})
    return status


async def _room_with_messages(hs: Harness) -> tuple[str, str, list[str], list[str]]:
    """(owner token, room, 3 of the owner's messages, 3 of bob's messages)."""
    _, otok = await hs.register()
    room = await hs.create_room(otok, preset="public_chat")
    _, btok = await hs.register()
    assert (await hs.request("POST", f"{V3}/join/{room}", btok, {}))[0] == 200
    mine = [await hs.send_message(otok, room, f"o{i}") for i in range(3)]
    theirs = [await hs.send_message(btok, room, f"b{i}") for i in range(3)]
    return otok, room, mine, theirs


class TestWithAdminRedactionLimit:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"rc_message": _THREE, "rc_admin_redaction": _FAST}

    async def test_moderation_uses_its_own_limit(self, hs: Harness) -> None:
        otok, room, mine, theirs = await _room_with_messages(hs)
        # The owner's message allowance is spent; removing others' messages still works.
        for i, event_id in enumerate(theirs):
            assert await _redact(hs, otok, room, event_id, f"t{i}") == 200
        assert await _redact(hs, otok, room, mine[0], "own") == 429


class TestWithoutAdminRedactionLimit:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"rc_message": _THREE}

    async def test_redactions_spend_the_message_limit(self, hs: Harness) -> None:
        otok, room, _, theirs = await _room_with_messages(hs)
        assert await _redact(hs, otok, room, theirs[0], "t0") == 429
