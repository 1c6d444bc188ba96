"""Step 1: a PDU that is not a valid event of its room version is dropped (never stored)."""

from __future__ import annotations

from starling.federation.receipt.format import check_format
from starling.federation.receipt.verdict import Dropped
from tests.federation.conftest import Scenario


async def test_valid_pdu_is_parsed_with_its_event_id(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, track=False)
    parsed = check_format(dict(event.pdu), scenario.dag.room_version)
    assert not isinstance(parsed, Dropped)
    assert parsed.event_id == event.event_id


async def test_malformed_pdu_is_dropped_and_not_stored(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, track=False)
    pdu = dict(event.pdu)
    pdu["depth"] = "seven"
    outcome = await scenario.handler.on_send_pdu("remote.example", pdu)
    assert outcome is not None and "depth" in outcome
    assert event.event_id not in scenario.rooms.events


async def test_pdu_for_an_unknown_room_is_refused(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, track=False)
    pdu = {**event.pdu, "room_id": "!elsewhere:remote.example"}
    outcome = await scenario.handler.on_send_pdu("remote.example", pdu)
    assert outcome is not None and "not in room" in outcome


async def test_not_an_object(scenario: Scenario) -> None:
    assert isinstance(check_format(["x"], scenario.dag.room_version), Dropped)
    outcome = await scenario.handler.on_send_pdu("remote.example", {"type": "x"})
    assert outcome is not None
