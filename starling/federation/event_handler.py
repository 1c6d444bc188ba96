"""The receipt pipeline: every PDU that reaches us from another server, pushed (`/send`),
pulled (missing events, backfill) or in a send_join response, goes through the same
ordered checks (`starling.federation.receipt`) and ends in the one event persister
(DESIGN §6, "A federated transaction").

For one event, under the room's lock:

1. format for the room version (dropped if invalid);
2. signatures (dropped if forged);
3. content hash (redacted if it does not match);
   then missing prev events are fetched with `get_missing_events` (pushed events only,
   bounded); a pushed event whose prev events are still missing is refused. A pulled
   event's missing prev events are bridged: `state_ids` at each, plus the prev event
   itself; the events we lack are fetched, checked (steps 1-4) and stored as outliers,
   and the state before the event resolves those states with ours;
4. its own auth events (rejected if they are wrong or do not allow it);
5. the state before it (rejected);
6. the room's current state (soft-failed; pushed and gap-filled events, not backfill).

Rejected and soft-failed events are persisted with their verdict: the persister keeps
them out of timelines and forward extremities.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from starling.errors import MatrixError
from starling.federation.metrics import INBOUND_PDUS
from starling.federation.ports import (
    EventReader,
    PersisterPort,
    RoomLocksPort,
    StateCalculatorPort,
    StateReader,
)
from starling.federation.receipt.auth_events import check_auth_events, create_event_id_for
from starling.federation.receipt.content_hash import checked_content
from starling.federation.receipt.fetched import ancestors_within, check_batch, parse_batch
from starling.federation.receipt.format import check_format, claimed_room_id
from starling.federation.receipt.remote import (
    MAX_SINGLE_FETCHES,
    MISSING_EVENTS_LIMIT,
    MISSING_EVENTS_MAX_DEPTH_SPAN,
    MISSING_EVENTS_ROUNDS,
    RemoteEvents,
)
from starling.federation.receipt.signatures import EventSignatureVerifier, check_signatures
from starling.federation.receipt.soft_fail import check_against_current_state
from starling.federation.receipt.state_before import check_against_state, load_auth_state
from starling.federation.receipt.verdict import Dropped, Rejected, SoftFailed
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import server_of
from starling.protocol.room_versions import RoomVersion
from starling.rooms.persister import EventContext
from starling.rooms.state_calculator import MissingStateError, StateSnapshot

logger = logging.getLogger(__name__)

# Missing prev events of one event whose state is asked for across a gap (one state_ids
# request each, one after the other); an event whose gap is wider is not taken in.
MAX_GAP_PREV_EVENTS = 10

ServerAllowed = Callable[[str, str], Awaitable[bool]]
"""(room_id, server_name) -> whether the room's server ACL lets that server in."""


class JoinedUsersReader(Protocol):
    async def get_joined_users(self, room_id: str) -> frozenset[str]: ...


class SendJoinResponseError(MatrixError):
    """A send_join response we cannot join with (no create event, join not allowed...):
    the resident server's fault, answered to our client as 502 M_UNKNOWN."""

    def __init__(self, reason: str) -> None:
        super().__init__(502, "M_UNKNOWN", f"The room's server sent an unusable join: {reason}")
        self.reason = reason


class _Loader:
    """`state_before.EventLoader` over the event store (rejected events never count)."""

    def __init__(self, events: EventReader) -> None:
        self._events = events

    async def get_events(self, event_ids: list[str]) -> Mapping[str, Event]:
        return await self._events.get_events(event_ids)


class FederationEventHandler:
    def __init__(
        self,
        *,
        events: EventReader,
        state: StateReader,
        memberships: JoinedUsersReader,
        calculator: StateCalculatorPort,
        persister: PersisterPort,
        locks: RoomLocksPort,
        keyring: EventSignatureVerifier,
        remote: RemoteEvents,
        server_allowed: ServerAllowed,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._calculator = calculator
        self._persister = persister
        self._locks = locks
        self._keyring = keyring
        self._remote = remote
        self._server_allowed = server_allowed
        self._loader = _Loader(events)

    # --- entry points -----------------------------------------------------------------

    async def on_send_pdu(self, origin: str, pdu_json: dict[str, Any]) -> str | None:
        """One PDU of a /send transaction from `origin`: None when processed (accepted,
        rejected and soft-failed alike: the spec wants no error for those), else why it
        was refused or dropped."""
        room_id = claimed_room_id(pdu_json)
        if room_id is None:
            return "PDU has no room_id"
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            return f"this server is not in room {room_id}"
        if not await self._server_allowed(room_id, origin):
            return f"server {origin} is denied by the room's server ACL"
        parsed = check_format(pdu_json, room_version)
        if isinstance(parsed, Dropped):
            return parsed.reason
        event = parsed
        # The sender may be another server's user: a resident relays the joins, leaves
        # and knocks it accepted through send_join/send_leave/send_knock ("the resident
        # server must also send the event to other servers"). Step 2 checks the
        # signature of the sender's server whoever relays the event; that server must
        # be allowed by the room's ACL as much as the origin.
        sender_server = server_of(event.sender)
        if sender_server != origin and not await self._server_allowed(room_id, sender_server):
            return f"server {sender_server} is denied by the room's server ACL"
        if not await self._origin_in_room(origin, event):
            return f"server {origin} is not in room {room_id}"
        async with self._locks.lock(room_id):
            if await self._is_known_in_dag(event.event_id):
                return None
            return await self._receive(origin, event, backfilled=False, fetch_missing=True)

    async def process_pulled_events(
        self, origin: str, room_id: str, pdus: list[dict[str, Any]], *, backfilled: bool
    ) -> None:
        """Events we asked `origin` for (backfill, missing events), oldest first. Each is
        checked on its own; a bad one does not stop the others."""
        room_version = await self._events.get_room_version(room_id)
        if room_version is None:
            return
        parsed, _ = parse_batch(pdus, room_id, room_version, None)
        ordered = sorted(parsed.values(), key=lambda e: (e.depth, e.event_id))
        async with self._locks.lock(room_id):
            for event in ordered:
                if await self._is_known_in_dag(event.event_id):
                    continue
                await self._receive_one_of_many(origin, event, backfilled=backfilled)

    async def process_send_join_response(
        self,
        origin: str,
        room_id: str,
        room_version: RoomVersion,
        join_event: Event,
        state: list[dict[str, Any]],
        auth_chain: list[dict[str, Any]],
    ) -> int:
        """Join a room through `origin`'s send_join answer: check every state and auth
        chain event (steps 1-4), store them as outliers, then persist our join with that
        state as the state before it. Returns the join's stream position."""
        async with self._locks.lock(room_id):
            batch = await check_batch(
                [*auth_chain, *state], room_id, room_version, self._keyring, self._events
            )
            state_events, _ = parse_batch(state, room_id, room_version, None)
            accepted = {**batch.accepted}
            # Events we already had (an earlier join) count as checked.
            have = await self._events.get_events(state_events.keys())
            accepted.update(have)
            state_ids: dict[StateKey, str] = {}
            for eid, ev in state_events.items():
                if eid in accepted and ev.is_state:
                    state_ids[ev.state_map_key] = eid
            if ("m.room.create", "") not in state_ids:
                raise SendJoinResponseError("the room's state has no valid create event")
            events, rejected = batch.to_store()
            await self._persister.persist_outliers(events, room_version, rejected=rejected)

            event, _ = checked_content(join_event)
            known = {**accepted, **(await self._events.get_events(event.auth_event_ids))}
            create_id = state_ids[("m.room.create", "")]
            verdict = check_auth_events(event, known, create_event=known.get(create_id))
            if isinstance(verdict, Rejected):
                raise SendJoinResponseError(f"our join is not allowed: {verdict.reason}")
            auth_state = await load_auth_state(event, state_ids, self._loader)
            verdict_state = check_against_state(event, auth_state)
            if isinstance(verdict_state, Rejected):
                raise SendJoinResponseError(f"our join is not allowed: {verdict_state.reason}")
            context = EventContext(state_before=StateSnapshot(state_ids, None))
            position = await self._persister.persist(event, context, new_room=room_version)
            if position is None:
                raise SendJoinResponseError("the join was not persisted")
            return position

    # --- one event --------------------------------------------------------------------

    async def _receive_one_of_many(self, origin: str, event: Event, *, backfilled: bool) -> None:
        """A pulled event: its failure, whatever it is, does not stop the next one."""
        try:
            outcome = await self._receive(origin, event, backfilled=backfilled, fetch_missing=False)
        except Exception:
            logger.exception("pulled event %s from %s failed", event.event_id, origin)
            return
        if outcome is not None:
            logger.info("pulled event %s from %s: %s", event.event_id, origin, outcome)

    async def _receive(
        self, origin: str, event: Event, *, backfilled: bool, fetch_missing: bool
    ) -> str | None:
        """Steps 2-6 and persistence for a formatted event; the room lock is held."""
        dropped = await check_signatures(event, self._keyring)
        if dropped is not None:
            return dropped.reason
        event, redacted = checked_content(event)
        if redacted:
            logger.info(
                "event %s from %s failed its content hash: redacted", event.event_id, origin
            )
        if fetch_missing:
            await self._fetch_missing_prev_events(origin, event)
            if await self._missing_prev_events(event):
                # A pushed event is taken in only once its sender has shown us what it
                # follows: the events get_missing_events pulled are bridged to our DAG
                # (state_ids at their missing prev events), the pushed one is not.
                return "its prev events could not be found (get_missing_events)"
        await self._ensure_auth_events(origin, event)

        before = await self._state_before(origin, event)
        if before is None:
            return "cannot determine the state before the event"

        rejected_reason = await self._check_own_auth_events(event)
        if rejected_reason is None:
            auth_state = await load_auth_state(event, before.ids, self._loader)
            verdict = check_against_state(event, auth_state)
            if isinstance(verdict, Rejected):
                rejected_reason = verdict.reason
        if rejected_reason is None:
            rejected_reason = await self._redacts_across_rooms(event)
        soft_failed = False
        if rejected_reason is None and not backfilled:
            soft_failed = await self._soft_fails(event, before)
        if rejected_reason is not None:
            logger.info("rejected %s from %s: %s", event.event_id, origin, rejected_reason)
        context = EventContext(
            state_before=before,
            rejected_reason=rejected_reason,
            soft_failed=soft_failed,
            backfilled=backfilled,
        )
        await self._persister.persist(event, context)
        outcome = "rejected" if rejected_reason else "soft_failed" if soft_failed else "accepted"
        INBOUND_PDUS.labels(outcome).inc()
        return None

    async def _redacts_across_rooms(self, event: Event) -> str | None:
        """A redaction naming an event we hold of another room is rejected (as Synapse
        does): it could never apply, and only a forger sends one."""
        if event.type != "m.room.redaction" or not event.redacts:
            return None
        found = await self._events.get_events([event.redacts], allow_rejected=True)
        target = found.get(event.redacts)
        if target is not None and target.room_id != event.room_id:
            return "it redacts an event of another room"
        return None

    async def _check_own_auth_events(self, event: Event) -> str | None:
        """Step 4; the reason if rejected."""
        wanted = list(event.auth_event_ids)
        create_id = create_event_id_for(event)
        if create_id is not None:
            wanted.append(create_id)
        got = await self._events.get_events_with_meta(wanted)
        known = {eid: ev for eid, (ev, _) in got.items()}
        rejected = {eid for eid, (_, meta) in got.items() if meta.rejected_reason is not None}
        create = known.get(create_id) if create_id is not None else None
        verdict = check_auth_events(event, known, rejected=rejected, create_event=create)
        return verdict.reason if isinstance(verdict, Rejected) else None

    async def _soft_fails(self, event: Event, before: StateSnapshot) -> bool:
        """Step 6. An event on top of exactly our forward extremities sees the current
        state as the state before it, already checked by step 5. Otherwise the current
        state is resolved together with the state before the event, as it will be once
        the event is in the DAG: a state change we only learnt across a gap (a join we
        hold as an outlier) counts, a ban we know of still wins."""
        extremities = await self._events.get_forward_extremities(event.room_id)
        if set(extremities) == set(event.prev_event_ids):
            return False
        current_ids = await self._state.get_current_state_ids(event.room_id)
        try:
            current = await self._calculator.resolve(event.room_version, [current_ids, before.ids])
        except MissingStateError:
            current = dict(current_ids)
        auth_state = await load_auth_state(event, current, self._loader)
        verdict = check_against_current_state(event, auth_state)
        if isinstance(verdict, SoftFailed):
            logger.info("soft-failed %s: %s", event.event_id, verdict.reason)
            return True
        return False

    # --- what an event needs ----------------------------------------------------------

    async def _is_known_in_dag(self, event_id: str) -> bool:
        got = await self._events.get_events_with_meta([event_id])
        return event_id in got and not got[event_id].meta.outlier

    async def _missing_prev_events(self, event: Event) -> list[str]:
        got = await self._events.get_events_with_meta(event.prev_event_ids)
        return [p for p in event.prev_event_ids if p not in got or got[p].meta.outlier]

    async def _origin_in_room(self, origin: str, event: Event) -> bool:
        """Whether `origin` takes part in the room: one of its users is joined, or the
        event is its own user's membership (a join it made through another server)."""
        joined = await self._memberships.get_joined_users(event.room_id)
        if any(server_of(u) == origin for u in joined):
            return True
        return (
            event.type == "m.room.member"
            and event.state_key is not None
            and server_of(event.state_key) == origin
        )

    async def _fetch_missing_prev_events(self, origin: str, event: Event) -> None:
        """Pull the events between our forward extremities and `event` with
        get_missing_events (bounded in events, depth and rounds) and process them oldest
        first. Whatever stays missing is bridged by `_state_before`."""
        if not await self._missing_prev_events(event):
            return
        room_id = event.room_id
        rv = event.room_version
        extremities = await self._events.get_forward_extremities(room_id)
        ext_events = await self._events.get_events(extremities, allow_rejected=True)
        base_depth = min((e.depth for e in ext_events.values()), default=event.depth)
        min_depth = max(0, base_depth - MISSING_EVENTS_MAX_DEPTH_SPAN)
        collected: dict[str, Event] = {}
        latest = [event.event_id]
        for _ in range(MISSING_EVENTS_ROUNDS):
            pdus = await self._remote.get_missing_events(
                origin,
                room_id,
                earliest=extremities,
                latest=latest,
                min_depth=min_depth,
                limit=MISSING_EVENTS_LIMIT,
            )
            got, _ = parse_batch(pdus, room_id, rv, None)
            new = {
                eid: ev
                for eid, ev in got.items()
                if eid not in collected and eid != event.event_id and ev.depth >= min_depth
            }
            if not new:
                break
            collected.update(new)
            prev_ids = {p for ev in collected.values() for p in ev.prev_event_ids}
            local = await self._events.get_events_with_meta(prev_ids - collected.keys())
            frontier = [
                ev.event_id
                for ev in collected.values()
                if any(p not in collected and p not in local for p in ev.prev_event_ids)
            ]
            if not frontier:
                break
            latest = frontier
        # Only what lies between our DAG and the event: its ancestors, reached without
        # passing through an event we already hold as a timeline event. The answer may
        # go on past those (a breadth-first walk stops only at the `earliest` we named);
        # what lies behind them — the room's state before our join, which we hold as
        # outliers — is history for backfill, never new timeline events.
        in_dag = await self._events.get_events_with_meta(collected)
        behind = {eid for eid, (_, meta) in in_dag.items() if not meta.outlier}
        collected = ancestors_within(
            event.prev_event_ids, {k: v for k, v in collected.items() if k not in behind}
        )
        for missing in sorted(collected.values(), key=lambda e: (e.depth, e.event_id)):
            if await self._is_known_in_dag(missing.event_id):
                continue
            await self._receive_one_of_many(origin, missing, backfilled=False)

    async def _ensure_auth_events(self, origin: str, event: Event) -> None:
        """Fetch the event's auth chain from `origin` if we lack any of its auth events
        (or, in room version 12, the create event); store what passes as outliers."""
        wanted = set(event.auth_event_ids)
        create_id = create_event_id_for(event)
        if create_id is not None:
            wanted.add(create_id)
        got = await self._events.get_events_with_meta(wanted)
        if wanted <= got.keys():
            return
        pdus = await self._remote.event_auth(origin, event.room_id, event.event_id)
        await self._store_outliers(pdus, event.room_id, event.room_version)

    async def _store_outliers(
        self,
        pdus: Sequence[dict[str, Any]],
        room_id: str,
        rv: RoomVersion,
        wanted: set[str] | None = None,
    ) -> None:
        batch = await check_batch(pdus, room_id, rv, self._keyring, self._events, wanted=wanted)
        for eid, why in batch.refused.items():
            logger.info("fetched event %s refused: %s", eid, why)
        events, rejected = batch.to_store()
        if events:
            await self._persister.persist_outliers(events, rv, rejected=rejected)

    async def _state_before(self, origin: str, event: Event) -> StateSnapshot | None:
        """The state before `event`: from our DAG when we have its prev events, else
        across the gap with the state `origin` had at the event (state_ids)."""
        missing = await self._missing_prev_events(event)
        if not missing:
            try:
                snapshot: StateSnapshot = await self._calculator.state_before(event)
                return snapshot
            except MissingStateError as e:
                missing = sorted(e.event_ids)
        return await self._state_across_gap(origin, event, missing)

    async def _state_across_gap(
        self, origin: str, event: Event, missing: Sequence[str]
    ) -> StateSnapshot | None:
        """The state before `event` when some of its prev events are not in our DAG: for
        each missing prev event, the state `origin` had before it (state_ids) plus the
        prev event itself (fetched and checked like the state), resolved together with
        the state after the prev events we do hold. None if `origin` cannot tell us."""
        room_id = event.room_id
        rv = event.room_version
        if len(missing) > MAX_GAP_PREV_EVENTS:
            logger.info("%s: %d prev events missing, too many to ask", event.event_id, len(missing))
            return None
        state_sets: list[Mapping[StateKey, str]] = []
        for prev_id in missing:
            after = await self._state_after_remote_event(origin, room_id, rv, prev_id)
            if after is None:
                return None
            state_sets.append(after)
        missing_set = set(missing)
        known_prevs = [p for p in event.prev_event_ids if p not in missing_set]
        if known_prevs:
            try:
                ours = await self._calculator.state_after_events(room_id, rv, known_prevs)
                state_sets.append(ours.ids)
            except MissingStateError:
                pass  # those prevs are outliers too, with no state of their own here
        if len(state_sets) == 1:
            return StateSnapshot(dict(state_sets[0]), None)
        try:
            resolved = await self._calculator.resolve(rv, state_sets)
        except MissingStateError:
            return None
        return StateSnapshot(resolved, None)

    async def _state_after_remote_event(
        self, origin: str, room_id: str, rv: RoomVersion, event_id: str
    ) -> dict[StateKey, str] | None:
        """The state after `event_id` as `origin` sees it: its state_ids answer (the state
        before the event) with the event itself on top when it is a state event that its
        auth events and that state allow. Every event we lack is fetched, checked (steps
        1-4) and stored as an outlier; what does not pass is left out of the state."""
        answer = await self._remote.state_ids(origin, room_id, event_id)
        if answer is None:
            return None
        state_ids, auth_ids = answer
        wanted = set(state_ids) | set(auth_ids) | {event_id}
        have = await self._events.get_events_with_meta(wanted)
        need = wanted - have.keys()
        if need:
            if len(need) > MAX_SINGLE_FETCHES:
                pdus = await self._remote.state(origin, room_id, event_id)
                if event_id in need:
                    pdus.extend(await self._remote.events(origin, [event_id]))
            else:
                pdus = await self._remote.event_auth(origin, room_id, event_id)
                fetched_ids = {
                    ev.event_id for ev in parse_batch(pdus, room_id, rv, None)[0].values()
                }
                rest = sorted(need - fetched_ids)
                pdus = [*pdus, *(await self._remote.events(origin, rest))]
            await self._store_outliers(pdus, room_id, rv, wanted=need)
        stored = await self._events.get_events(state_ids)  # rejected ones are not returned
        remote_state: dict[StateKey, str] = {}
        for eid in state_ids:
            ev = stored.get(eid)
            if ev is not None and ev.is_state and ev.room_id == room_id:
                remote_state[ev.state_map_key] = eid
        if ("m.room.create", "") not in remote_state:
            return None
        top = (await self._events.get_events([event_id])).get(event_id)
        if top is None:
            logger.info("gap: %s from %s is not usable", event_id, origin)
        elif top.is_state and top.room_id == room_id:
            # Authorised by its own auth events (step 4, or it would not be returned). It
            # is not judged by the state the remote claims before it, which is no more
            # trustworthy than the event: that state is resolved with ours below, and
            # state resolution (v2) checks every conflicted event against the resolved
            # power state before keeping it.
            remote_state[top.state_map_key] = event_id
        return remote_state
