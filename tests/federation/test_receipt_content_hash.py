"""Step 3: an event whose content hash does not match is redacted, then processed."""

from __future__ import annotations

from starling.federation.receipt.content_hash import checked_content
from starling.protocol.event import Event
from starling.protocol.event_signing import sign_event
from tests.federation.conftest import Scenario


def _with_changed_body(scenario: Scenario, event: Event) -> Event:
    """The event's content changed after hashing, re-signed by its server: signatures
    cover only the redacted form, so they still verify and only the hash is wrong."""
    pdu = dict(event.pdu)
    pdu["content"] = {**pdu["content"], "body": "tampered"}
    pdu = sign_event(pdu, "remote.example", scenario.remote.key, event.room_version)
    return Event(pdu, event.event_id, event.room_version)


async def test_matching_hash_keeps_the_event(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, "hello", track=False)
    checked, redacted = checked_content(event)
    assert not redacted and checked.content["body"] == "hello"


async def test_bad_hash_means_the_redacted_event_is_stored(scenario: Scenario) -> None:
    event = scenario.dag.message(scenario.alice, "hello")
    bad = _with_changed_body(scenario, event)
    checked, redacted = checked_content(bad)
    assert redacted and checked.content == {} and checked.event_id == event.event_id

    assert await scenario.send(bad) is None
    stored, meta = scenario.rooms.events[event.event_id]
    assert stored.content == {}  # redacted, not the tampered body
    assert meta.rejected_reason is None  # a redacted message is still a valid event
    assert "hashes" in stored.pdu


async def test_redacted_state_event_keeps_protected_keys(scenario: Scenario) -> None:
    event = scenario.dag.add(
        scenario.alice, "m.room.join_rules", {"join_rule": "invite", "extra": 1}, state_key=""
    )
    pdu = dict(event.pdu)
    pdu["content"] = {"join_rule": "invite", "extra": 2}
    pdu = sign_event(pdu, "remote.example", scenario.remote.key, event.room_version)
    assert await scenario.send(Event(pdu, event.event_id, event.room_version)) is None
    stored = scenario.rooms.events[event.event_id].event
    assert stored.content == {"join_rule": "invite"}
    assert scenario.rooms.current[scenario.dag.room_id][("m.room.join_rules", "")] == event.event_id
