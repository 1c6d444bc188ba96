"""Step 6: the room's current state (the resolution of its forward extremities' states)
authorises the event, otherwise it is soft-failed (Server-Server API > Soft failure).

A soft-failed event is valid and stored and takes part in state resolution when a later
event cites it, but it is neither shown to clients nor cited by our own new events: it
keeps a banned user from evading the ban by attaching events to an old part of the DAG.
Only events pushed to us are checked; backfilled history and gap-filling outliers are not.
"""

from __future__ import annotations

from collections.abc import Mapping

from starling.federation.receipt.verdict import ACCEPTED, Accepted, SoftFailed
from starling.protocol.auth_rules import check_auth_rules
from starling.protocol.event import Event, StateKey


def check_against_current_state(
    event: Event, current: Mapping[StateKey, Event]
) -> Accepted | SoftFailed:
    """`current` holds the current state's entries that `state_before.auth_keys` names."""
    decision = check_auth_rules(event, current)
    if decision.allowed:
        return ACCEPTED
    return SoftFailed(f"not allowed by the room's current state: {decision.reason}")
