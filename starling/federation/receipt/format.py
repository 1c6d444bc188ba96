"""Step 1: the PDU is a valid event of its room version, otherwise it is dropped.

The room version comes from the room the PDU names (we must know the room to take an
event for it); in room version 12 a create event names no room and is identified by its
own hash, so it is only ever received where the caller already knows the room version
(a send_join response or an invite). The format rules themselves are the protocol
core's `parse_pdu`.
"""

from __future__ import annotations

from typing import Any

from starling.federation.receipt.verdict import Dropped
from starling.protocol.event import Event
from starling.protocol.event_format import EventFormatError, parse_pdu
from starling.protocol.room_versions import RoomVersion


def check_format(pdu: Any, room_version: RoomVersion) -> Event | Dropped:
    """The PDU as an `Event` with its ID, or why it is dropped."""
    if not isinstance(pdu, dict):
        return Dropped("PDU is not a JSON object")
    try:
        return parse_pdu(pdu, room_version)
    except EventFormatError as e:
        return Dropped(f"invalid event: {e.reason}")


def claimed_room_id(pdu: Any) -> str | None:
    """The room a PDU says it belongs to, before anything about it is checked."""
    if not isinstance(pdu, dict):
        return None
    room_id = pdu.get("room_id")
    return room_id if isinstance(room_id, str) else None
