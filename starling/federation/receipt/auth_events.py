"""Step 4: the event's own auth events are the right ones and authorise it, otherwise it
is rejected (Server-Server API > Checks performed on receipt of a PDU, step 4; the room
versions' auth rule 2, "considering the event's auth_events").

The auth events must be exactly a selection the spec allows for this event (Auth events
selection): no two for one (type, state_key), nothing the selection does not name, none
from another room, none rejected, and the create event listed in room versions 1-11 but
never in room version 12 (where the room ID names it). The event must then pass the
room version's authorisation rules against that state alone.

This is pure: the caller loads the listed events (fetching unknown ones from the remote
first) and says which of them were rejected. `starling debug check-auth` runs the same
function.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from starling.federation.receipt.verdict import ACCEPTED, Accepted, Rejected
from starling.protocol.auth_rules import CREATE_KEY, check_auth_events_list, check_auth_rules
from starling.protocol.event import Event, StateKey


def check_auth_events(
    event: Event,
    known: Mapping[str, Event],
    *,
    rejected: Container[str] = (),
    create_event: Event | None = None,
) -> Accepted | Rejected:
    """Whether `event` passes against its own auth events.

    `known` maps event IDs to events and must hold every event `event.auth_event_ids`
    names that we have (others count as missing); `rejected` names the rejected ones.
    `create_event` is the room's create event, needed in room version 12 where the
    auth events do not list it.
    """
    if event.type == "m.room.create" and event.state_key == "":
        decision = check_auth_rules(event, {})
        return ACCEPTED if decision.allowed else Rejected(decision.reason)

    missing = [aid for aid in event.auth_event_ids if aid not in known]
    if missing:
        return Rejected(f"auth event {missing[0]} is unknown")
    listed = [known[aid] for aid in event.auth_event_ids]
    decision = check_auth_events_list(event, listed, rejected)
    if not decision.allowed:
        return Rejected(decision.reason)

    auth_state: dict[StateKey, Event] = {e.state_map_key: e for e in listed}
    if not event.room_version.create_event_in_auth_events:
        if create_event is None:
            return Rejected("the room's create event is unknown")
        if create_event.event_id in rejected:
            return Rejected("the room's create event was rejected")
        auth_state[CREATE_KEY] = create_event
    decision = check_auth_rules(event, auth_state)
    return ACCEPTED if decision.allowed else Rejected(decision.reason)


def create_event_id_for(event: Event) -> str | None:
    """Room version 12: the create event's ID, which the room ID is made of."""
    if event.room_version.room_id_from_create_event and event.room_id.startswith("!"):
        return "$" + event.room_id[1:]
    return None
