"""A to-device flood: `rc_to_device` limits what one user sends (counted in messages),
and a recipient inbox that is full refuses the send with 429 instead of dropping it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2ee.support import Device, new_device
from tests.e2ee.test_to_device import send, sync
from tests.support.harness import Harness


def _limited(status: int, body: Any) -> bool:
    return status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0


async def _two_devices(hs: Harness, localpart: str) -> Device:
    device = await new_device(hs, localpart, "ONE")
    await hs.services.account_store.upsert_device(device.user_id, "TWO")
    return device


class TestRateLimit:
    @pytest.fixture
    def hs_config(self) -> dict[str, Any]:
        return {"rc_to_device": {"per_second": 0.0001, "burst_count": 3}}

    async def test_messages_per_sender_are_limited(self, hs: Harness) -> None:
        alice = await new_device(hs, "alice")
        bob = await _two_devices(hs, "bob")
        assert (await send(hs, alice, "a1", {bob.user_id: {"*": {"n": 1}}}))[0] == 200
        # Two more messages would be four in all: over the burst of three.
        assert _limited(*await send(hs, alice, "a2", {bob.user_id: {"*": {"n": 2}}}))
        # Another sender has its own allowance; a request larger than the burst still
        # goes through on a full allowance (it uses all of it).
        carol = await new_device(hs, "carol")
        dave = await new_device(hs, "dave")
        messages = {bob.user_id: {"*": {"n": 3}}, dave.user_id: {"DEV": {"n": 3}}}
        assert (await send(hs, carol, "c1", messages))[0] == 200
        assert _limited(*await send(hs, carol, "c2", {dave.user_id: {"DEV": {"n": 4}}}))
        # Nothing refused was delivered.
        events, _ = await sync(hs, Device(bob.user_id, "ONE", ""), None)
        assert [(e["sender"], e["content"]["n"]) for e in events] == [
            (alice.user_id, 1),
            (carol.user_id, 3),
        ]


async def test_a_full_inbox_refuses_instead_of_dropping(hs: Harness) -> None:
    service = hs.services.e2ee.to_device
    service.max_pending_per_sender = 2
    service.max_inbox = 4
    alice = await new_device(hs, "alice")
    carol = await new_device(hs, "carol")
    dave = await new_device(hs, "dave")
    bob = await new_device(hs, "bob")
    for i in range(2):
        assert (await send(hs, alice, f"a{i}", {bob.user_id: {"DEV": {"i": i}}}))[0] == 200
    # Alice has as many messages waiting for bob's device as one sender may: refused.
    status, body = await send(hs, alice, "a2", {bob.user_id: {"DEV": {"i": 2}}})
    assert _limited(status, body), body
    # Others still reach bob, until his inbox is full.
    for i in range(2):
        assert (await send(hs, carol, f"c{i}", {bob.user_id: {"DEV": {"i": 10 + i}}}))[0] == 200
    status, body = await send(hs, dave, "d0", {bob.user_id: {"DEV": {"i": 20}}})
    assert _limited(status, body), body
    # The refused requests were not recorded as served: the same transaction IDs are
    # retried once bob has read his inbox, and then delivered.
    events, token = await sync(hs, bob, None)
    assert [e["content"]["i"] for e in events] == [0, 1, 10, 11]
    await sync(hs, bob, token)  # acknowledges them
    assert (await send(hs, alice, "a2", {bob.user_id: {"DEV": {"i": 2}}}))[0] == 200
    assert (await send(hs, dave, "d0", {bob.user_id: {"DEV": {"i": 20}}}))[0] == 200
    events, _ = await sync(hs, bob, token)
    assert [e["content"]["i"] for e in events] == [2, 20]
