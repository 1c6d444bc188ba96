"""Building this server's own events: fill in the DAG fields, hash, sign, derive the ID.

Spec: server-server-api "PDUs" and "Auth events selection"; the event's auth_events are
exactly the state the auth rules will look at, chosen from the state before the event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starling.errors import MatrixError
from starling.protocol.auth_rules import auth_types_for_event
from starling.protocol.event import Event, StateKey
from starling.protocol.event_format import EventFormatError, validate_pdu
from starling.protocol.event_signing import EventSigningError, hash_and_sign_event, sign_event
from starling.protocol.hashing import compute_event_id
from starling.protocol.power_levels import power_levels_shape_error
from starling.protocol.room_versions import EventFormat, RedactionRules, RoomVersion
from starling.protocol.signing import SigningKey

Clock = Callable[[], int]


def now_ms() -> int:
    return int(time.time() * 1000)


class EventBuilder:
    def __init__(self, server_name: str, signing_key: SigningKey, clock: Clock = now_ms) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._clock = clock
        self._v1_counter = 0

    def now(self) -> int:
        return self._clock()

    def build(
        self,
        *,
        room_version: RoomVersion,
        room_id: str | None,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        prev_events: Sequence[Event],
        auth_events: Sequence[Event],
        redacts: str | None = None,
        origin_server_ts: int | None = None,
    ) -> Event:
        """A signed event with its ID; M_BAD_JSON / M_TOO_LARGE if it cannot be one.

        `auth_events` are the events `auth_keys_for` selected from the state before it;
        `origin_server_ts` defaults to the clock's now.
        """
        pdu = self.template(
            room_version=room_version,
            room_id=room_id,
            event_type=event_type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_events=prev_events,
            auth_events=auth_events,
            redacts=redacts,
            origin_server_ts=origin_server_ts,
        )
        return self.finish(pdu, room_version)

    def template(
        self,
        *,
        room_version: RoomVersion,
        room_id: str | None,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        prev_events: Sequence[Event],
        auth_events: Sequence[Event],
        redacts: str | None = None,
        origin_server_ts: int | None = None,
    ) -> dict[str, Any]:
        """The unsigned, unhashed PDU: what make_join/make_leave/make_knock answer with
        (the requesting server fills in its own origin, timestamp and ID and signs)."""
        if event_type == "m.room.power_levels" and state_key == "":
            shape_error = power_levels_shape_error(content)
            if shape_error is not None:
                raise MatrixError(400, "M_BAD_JSON", f"Invalid power levels: {shape_error}")
        auth_ids = [e.event_id for e in auth_events]
        depth = max((e.depth for e in prev_events), default=0) + 1
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "depth": min(depth, 2**53 - 1),
            "origin_server_ts": self._clock() if origin_server_ts is None else origin_server_ts,
            "prev_events": [e.event_id for e in prev_events],
            "auth_events": auth_ids,
        }
        if room_id is not None:
            pdu["room_id"] = room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None and not room_version.redacts_in_content:
            pdu["redacts"] = redacts
        if room_version.event_format is EventFormat.V1:
            # Rooms 1-2 name events explicitly and reference them with their hashes.
            self._v1_counter += 1
            pdu["event_id"] = f"${self._clock()}{self._v1_counter}:{self._server_name}"
            pdu["origin"] = self._server_name
            by_id = {e.event_id: e for e in prev_events}
            pdu["prev_events"] = [[eid, _hashes(by_id.get(eid))] for eid in pdu["prev_events"]]
            pdu["auth_events"] = [[e.event_id, _hashes(e)] for e in auth_events]
        elif room_version.redaction is not RedactionRules.V11:
            # Rooms before 11 still protect `origin` under redaction; later ones dropped it.
            pdu["origin"] = self._server_name
        return pdu

    def adopt_template(self, template: dict[str, Any], room_version: RoomVersion) -> Event:
        """Our event from a resident server's make_join/make_leave/make_knock template:
        this server's origin, timestamp and (rooms 1-2) event ID, hashed and signed."""
        pdu = {
            k: v
            for k, v in template.items()
            if k not in ("signatures", "hashes", "unsigned", "event_id", "origin")
        }
        pdu["origin_server_ts"] = self._clock()
        if room_version.event_format is EventFormat.V1:
            self._v1_counter += 1
            pdu["event_id"] = f"${self._clock()}{self._v1_counter}:{self._server_name}"
        if room_version.redaction is not RedactionRules.V11:
            pdu["origin"] = self._server_name
        return self.finish(pdu, room_version)

    def countersign(self, event: Event) -> Event:
        """`event` with this server's signature added (a restricted join it authorised,
        an invite of one of its users); the event ID does not change."""
        pdu = sign_event(event.pdu, self._server_name, self._key, event.room_version)
        return Event(pdu, event.event_id, event.room_version)

    def finish(self, pdu: dict[str, Any], room_version: RoomVersion) -> Event:
        """Hash and sign a PDU of this server's (built here, or a template a resident
        server sent), check its format and derive its ID."""
        try:
            signed = hash_and_sign_event(pdu, self._server_name, self._key, room_version)
            validate_pdu(signed, room_version)
        except EventSigningError as e:
            raise MatrixError(400, "M_BAD_JSON", str(e)) from None
        except EventFormatError as e:
            if "65536" in str(e) or "too large" in str(e).lower():
                raise MatrixError(413, "M_TOO_LARGE", str(e)) from None
            raise MatrixError(400, "M_BAD_JSON", f"Invalid event: {e}") from None
        event_id = compute_event_id(signed, room_version)
        return Event(signed, event_id, room_version)


def auth_keys_for(
    event_type: str,
    state_key: str | None,
    sender: str,
    content: Mapping[str, Any],
    room_version: RoomVersion,
) -> list[StateKey]:
    """The state keys the auth rules look at for this event, the create event included
    (in room version 12 it is implied by the room ID rather than listed)."""
    keys = auth_types_for_event(event_type, state_key, sender, content, room_version)
    if event_type != "m.room.create" and ("m.room.create", "") not in keys:
        keys.append(("m.room.create", ""))
    return keys


def listed_auth_events(auth_state: Mapping[StateKey, Event], rv: RoomVersion) -> list[Event]:
    """The auth events to list in the PDU: all of auth_state, minus the create event
    where the room version implies it."""
    return [
        e
        for k, e in auth_state.items()
        if rv.create_event_in_auth_events or k != ("m.room.create", "")
    ]


def _hashes(event: Event | None) -> dict[str, Any]:
    if event is None:
        return {}
    hashes = event.pdu.get("hashes")
    return dict(hashes) if isinstance(hashes, dict) else {}
