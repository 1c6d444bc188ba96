"""The checks on receipt of a PDU (Server-Server API > Checks performed on receipt of a
PDU), one module per step of the spec's list, in its order:

1. `format`        valid event for the room version, else dropped;
2. `signatures`    the required servers' signatures, else dropped;
3. `content_hash`  the content hash, else the event is redacted and processing continues;
4. `auth_events`   the event's own auth events are exactly the right ones and authorise
                   it, else rejected;
5. `state_before`  the state before the event authorises it, else rejected;
6. `soft_fail`     the room's current state authorises it, else soft-failed.

Each step is a small function returning a `verdict`. Fetching what a step needs from
other servers (missing prev events, the state at a gap, auth chains) is `missing` and
`gap`; running the steps in order and persisting the outcome is
`starling.federation.event_handler`.
"""

from starling.federation.receipt.verdict import (
    ACCEPTED,
    Accepted,
    Dropped,
    Outlier,
    Rejected,
    SoftFailed,
    Verdict,
)

__all__ = ["ACCEPTED", "Accepted", "Dropped", "Outlier", "Rejected", "SoftFailed", "Verdict"]
