"""Step 5: the state before the event authorises it, otherwise it is rejected.

The state before an event is the resolution of its prev events' states (the state
calculator's `state_before`, or the state a remote server gave us across a gap, see
`gap`). Only the entries the auth rules read are loaded: the auth-events selection for
this event plus the create event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from starling.federation.receipt.verdict import ACCEPTED, Accepted, Rejected
from starling.protocol.auth_rules import check_auth_rules
from starling.protocol.event import Event, StateKey
from starling.rooms.builder import auth_keys_for


class EventLoader(Protocol):
    async def get_events(self, event_ids: list[str]) -> Mapping[str, Event]: ...


def auth_keys(event: Event) -> list[StateKey]:
    """The state entries the auth rules look at for `event`, the create event included."""
    return auth_keys_for(
        event.type, event.state_key, event.sender, event.content, event.room_version
    )


async def load_auth_state(
    event: Event, state: Mapping[StateKey, str], load: EventLoader
) -> dict[StateKey, Event]:
    """The part of `state` (a state map of IDs) the auth rules read for `event`."""
    ids = {k: state[k] for k in auth_keys(event) if k in state}
    events = await load.get_events(list(ids.values()))
    return {k: events[eid] for k, eid in ids.items() if eid in events}


def check_against_state(event: Event, auth_state: Mapping[StateKey, Event]) -> Accepted | Rejected:
    decision = check_auth_rules(event, auth_state)
    if decision.allowed:
        return ACCEPTED
    return Rejected(f"not allowed by the state before it: {decision.reason}")
