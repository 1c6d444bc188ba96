"""What a receipt check decides about a PDU.

* `Accepted`: the step passed.
* `Dropped(reason)`: malformed or forged (steps 1-2); the event is not stored at all.
* `Rejected(reason)`: not authorised by its auth events or the state before it (steps
  4-5); stored as rejected, never served as a timeline event nor used as an extremity.
* `SoftFailed(reason)`: authorised by its history but not by the room's current state
  (step 6); stored, takes part in state resolution, but not shown to clients.
* `Outlier`: accepted without a known place in the DAG (state and auth chain events
  fetched to fill a gap or received in a send_join response).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Accepted:
    pass


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str


@dataclass(frozen=True, slots=True)
class SoftFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Outlier:
    pass


Verdict = Accepted | Dropped | Rejected | SoftFailed | Outlier

ACCEPTED = Accepted()
OUTLIER = Outlier()
