"""Steps 1-4 over a batch of events fetched from another server (an auth chain, the
state at a gap, a send_join response): each is parsed for the room version, its
signatures and content hash checked, and it is authorised against its own auth events,
in an order where every auth event is decided before the events citing it.

What passes becomes an outlier: stored, usable as state and as an auth event, with no
place in the DAG. An event its auth events reject is stored as a rejected outlier, so
whatever cites it is rejected too; a dropped event (malformed, forged) is not stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starling.federation.ports import EventReader
from starling.federation.receipt.auth_events import check_auth_events, create_event_id_for
from starling.federation.receipt.content_hash import checked_content
from starling.federation.receipt.format import check_format
from starling.federation.receipt.signatures import EventSignatureVerifier, check_signatures
from starling.federation.receipt.verdict import Accepted, Dropped
from starling.protocol.event import Event
from starling.protocol.room_versions import RoomVersion

# Signature checks in flight at once for one batch.
_VERIFY_CONCURRENCY = 32


@dataclass
class CheckedBatch:
    accepted: dict[str, Event] = field(default_factory=dict)  # in a valid auth order
    rejected: dict[str, tuple[Event, str]] = field(default_factory=dict)  # step 4 failed
    refused: dict[str, str] = field(default_factory=dict)  # dropped (or rejected): why

    def ordered(self) -> list[Event]:
        return list(self.accepted.values())

    def to_store(self) -> tuple[list[Event], dict[str, str]]:
        """The events to store as outliers (accepted and rejected: a rejected event is
        remembered as such, so nothing citing it is accepted later) and the reasons."""
        reasons = {eid: why for eid, (_, why) in self.rejected.items()}
        return [*self.accepted.values(), *(ev for ev, _ in self.rejected.values())], reasons


def parse_batch(
    pdus: Iterable[Any], room_id: str, room_version: RoomVersion, wanted: Collection[str] | None
) -> tuple[dict[str, Event], dict[str, str]]:
    """Step 1 for every PDU; only events of `room_id` (and, if given, with an ID in
    `wanted`) are kept, so a server cannot slip other events into an answer."""
    events: dict[str, Event] = {}
    refused: dict[str, str] = {}
    for pdu in pdus:
        parsed = check_format(pdu, room_version)
        if isinstance(parsed, Dropped):
            continue
        if wanted is not None and parsed.event_id not in wanted:
            continue
        if parsed.room_id != room_id:
            refused[parsed.event_id] = "event is from another room"
            continue
        events[parsed.event_id] = parsed
    return events, refused


def ancestors_within(start: Iterable[str], events: Mapping[str, Event]) -> dict[str, Event]:
    """The events of `events` reachable from `start` (included) through prev_events
    inside `events`: what a server answering "the events before these" may send. Anything
    else in its answer (a branch of its own making) is left out."""
    out: dict[str, Event] = {}
    todo = [e for e in start if e in events]
    while todo:
        eid = todo.pop()
        if eid in out:
            continue
        event = events[eid]
        out[eid] = event
        todo.extend(p for p in event.prev_event_ids if p in events and p not in out)
    return out


async def verify_batch(
    events: Mapping[str, Event], keyring: EventSignatureVerifier
) -> tuple[dict[str, Event], dict[str, str]]:
    """Steps 2 and 3: events with valid signatures, redacted where the hash fails."""
    sem = asyncio.Semaphore(_VERIFY_CONCURRENCY)

    async def one(event: Event) -> Dropped | None:
        async with sem:
            return await check_signatures(event, keyring)

    results = await asyncio.gather(*(one(e) for e in events.values()))
    good: dict[str, Event] = {}
    refused: dict[str, str] = {}
    for event, result in zip(events.values(), results, strict=True):
        if result is not None:
            refused[event.event_id] = result.reason
        else:
            good[event.event_id] = checked_content(event)[0]
    return good, refused


async def check_batch(
    pdus: Iterable[Any],
    room_id: str,
    room_version: RoomVersion,
    keyring: EventSignatureVerifier,
    local: EventReader,
    *,
    wanted: Collection[str] | None = None,
) -> CheckedBatch:
    """Steps 1-4 over `pdus`; events already stored locally are skipped (kept as they are)."""
    parsed, refused = parse_batch(pdus, room_id, room_version, wanted)
    have = await local.get_events_with_meta(parsed.keys())
    fresh = {eid: ev for eid, ev in parsed.items() if eid not in have}
    verified, bad_sigs = await verify_batch(fresh, keyring)
    refused.update(bad_sigs)

    # Auth events of the batch that are not in it must be local.
    outside = {aid for ev in verified.values() for aid in ev.auth_event_ids if aid not in verified}
    create_ids = {cid for ev in verified.values() if (cid := create_event_id_for(ev))}
    local_known = await local.get_events_with_meta((outside | create_ids) - verified.keys())
    known: dict[str, Event] = {eid: ev for eid, (ev, _) in local_known.items()}
    rejected: set[str] = {
        eid for eid, (_, meta) in local_known.items() if meta.rejected_reason is not None
    }

    out = CheckedBatch(refused=refused)
    pending = sorted(verified.values(), key=lambda e: (e.depth, e.event_id))
    while pending:
        progressed = False
        waiting: list[Event] = []
        for event in pending:
            deps = set(event.auth_event_ids)
            cid = create_event_id_for(event)
            if cid is not None and cid != event.event_id:
                deps.add(cid)
            if any(d in verified and d not in known and d not in out.refused for d in deps):
                waiting.append(event)  # an auth event of the batch is not decided yet
                continue
            progressed = True
            create = known.get(cid) if cid is not None else None
            verdict = check_auth_events(event, known, rejected=rejected, create_event=create)
            known[event.event_id] = event
            if isinstance(verdict, Accepted):
                out.accepted[event.event_id] = event
            else:
                rejected.add(event.event_id)
                out.rejected[event.event_id] = (event, verdict.reason)
                out.refused[event.event_id] = verdict.reason
        if not progressed:  # an auth cycle: nothing in it can be authorised
            for event in waiting:
                out.refused[event.event_id] = "auth events form a cycle"
            break
        pending = waiting
    return out
