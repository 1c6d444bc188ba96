"""The rooms part of a /sync response: join, invite, leave and knock sections.

Spec: client-server-api "Syncing", "Lazy-loading room members". One response is built
from a fixed window of the events stream, (since, upto], with a fixed number of reads
whatever the number of rooms: the user's memberships (cached), the membership changes in
the window, the timelines of every room in one batch, the visibility of those events per
distinct state group, the state groups needed (one batch), the events to send (one
batch) and the room summaries (one batch). Refilling a timeline emptied by filters is
also batched, and bounded.

Which rooms appear:
- initial sync: every joined room (full state), every invite and knock, and with
  `include_leave` every room left or banned from (up to the departure);
- incremental: joined rooms with new events (state as a delta from `since`), rooms
  whose membership changed in the window (a new join gets full state; an invite, knock or
  departure goes to its section), and with `full_state` every joined room again.
Forgotten rooms never appear.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starling.protocol.event import StateKey
from starling.rooms import refill
from starling.rooms.client_format import (
    EventFormatter,
    FormatOptions,
    JsonDict,
    stripped_state_event,
)
from starling.rooms.visibility import HistoryVisibility
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import Membership, MembershipChange, MembershipStore
from starling.storage.state import StateStore
from starling.sync.filtering import SyncFilter, parse_sync_filter
from starling.sync.lazy_members import KnownMembers, LazyMemberCache
from starling.sync.tokens import pagination_token

logger = logging.getLogger(__name__)


# State shown to invitees and knockers (the spec's recommended stripped state).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.encryption",
)
MAX_HEROES = 5
# Extra rounds of reading older events for timelines that filters or history visibility
# emptied, before giving up and marking them limited.
MAX_REFILL_ROUNDS = 3
MAX_FETCH = 500


@dataclass
class RoomsRequest:
    user_id: str
    device_id: str | None
    filter: SyncFilter
    since: int | None  # events position of `since`; None for an initial sync
    upto: int
    full_state: bool
    use_state_after: bool
    since_token: str | None
    next_token: str
    # Users whose events (other than state) and invites this user does not see.
    ignored: frozenset[str] = frozenset()
    # The name of each room's state section ("state", "state_after", or MSC4222's
    # unstable "org.matrix.msc4222.state_after" for a client that asked that way).
    state_key: str = "state"
    # Rooms the device peeks into (MSC2753, rooms/peeks.py): True for a peek newer than
    # `since` (the whole room is sent), False for one the client already has.
    peeks: Mapping[str, bool] = field(default_factory=dict)


@dataclass
class _Plan:
    room_id: str
    section: str  # "join", "leave" or "peek"
    lower: int | None  # timeline: events after this position...
    upper: int  # ...up to and including this one
    full_state: bool  # send all state rather than a delta from `lower`
    no_state: bool = False  # never joined: no state at all (a rejected invite)
    end_event: str | None = None  # leave rooms: the departure; its state ends the room
    # Joined in this window (incremental sync): always `limited`, as Synapse and
    # Dendrite send it, since the client holds none of its history.
    newly_joined: bool = False
    events: list[StoredEvent] = field(default_factory=list)  # newest first
    limited: bool = False  # older events exist that the timeline leaves out
    exhausted: bool = False
    scanned_to: int | None = None  # oldest position read so far


@dataclass
class RoomsResult:
    rooms: dict[str, dict[str, Any]]
    has_data: bool
    joined_rooms: frozenset[str]
    # Incremental syncs: users who came into the user's view in this window, whose
    # presence the client has never been sent: the members of rooms joined in it, and
    # users the timeline or state shows joining, invited or knocking (not the user).
    newly_joined_users: frozenset[str] = frozenset()


class RoomSyncBuilder:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        visibility: HistoryVisibility,
        formatter: EventFormatter,
        lazy_cache: LazyMemberCache,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._visibility = visibility
        self._formatter = formatter
        self._lazy = lazy_cache

    async def build(self, req: RoomsRequest) -> RoomsResult:
        memberships = await self._memberships.get_rooms_for_user(req.user_id)
        joined = frozenset(r for r, m in memberships.items() if m.membership == "join")
        if req.since is None:
            plans, invites, knocks = await self._initial_plans(req, memberships)
        else:
            plans, invites, knocks = await self._incremental_plans(req, memberships, joined)
        if req.peeks:
            plans.extend(await self._peek_plans(req, memberships))
        filt = req.filter
        plans = [p for p in plans if filt.includes_room(p.room_id)]
        invites = [m for m in invites if filt.includes_room(m.room_id)]
        knocks = [m for m in knocks if filt.includes_room(m.room_id)]
        rooms: dict[str, dict[str, Any]] = {"join": {}, "invite": {}, "leave": {}, "knock": {}}
        if req.peeks:
            rooms["peek"] = {}
        has_data = False
        newcomers: frozenset[str] = frozenset()
        if plans:
            has_data, newcomers = await self._fill_rooms(req, plans, joined, rooms)
        if invites:
            rooms["invite"] = await self._stripped_rooms(req, invites, "invite_state")
            has_data = True
        if knocks:
            rooms["knock"] = await self._stripped_rooms(req, knocks, "knock_state")
            has_data = True
        visible_joined = frozenset(r for r in joined if filt.includes_room(r))
        return RoomsResult(rooms, has_data, visible_joined, newcomers)

    # --- which rooms ---------------------------------------------------------------------

    async def _initial_plans(
        self, req: RoomsRequest, memberships: Mapping[str, Membership]
    ) -> tuple[list[_Plan], list[Membership], list[Membership]]:
        plans: list[_Plan] = []
        invites: list[Membership] = []
        knocks: list[Membership] = []
        departed: list[Membership] = []
        for room_id, m in memberships.items():
            if m.membership == "join":
                plans.append(_Plan(room_id, "join", None, req.upto, full_state=True))
            elif m.membership == "invite":
                invites.append(m)
            elif m.membership == "knock":
                knocks.append(m)
            elif req.filter.include_leave:
                departed.append(m)
        if departed:
            forgotten = await self._memberships.forgotten_rooms(req.user_id)
            ever_joined = await self._memberships.rooms_ever_joined(
                req.user_id, (m.room_id for m in departed)
            )
            for m in departed:
                if m.room_id not in forgotten:
                    plans.append(
                        _Plan(
                            m.room_id,
                            "leave",
                            None,
                            min(m.stream_ordering or req.upto, req.upto),
                            full_state=True,
                            # Never joined (a rejected invite, a ban from outside): no
                            # state, as in an incremental sync.
                            no_state=m.room_id not in ever_joined,
                            end_event=m.event_id,
                        )
                    )
        return plans, invites, knocks

    async def _incremental_plans(
        self,
        req: RoomsRequest,
        memberships: Mapping[str, Membership],
        joined: frozenset[str],
    ) -> tuple[list[_Plan], list[Membership], list[Membership]]:
        assert req.since is not None
        since = req.since
        # From the current-state-delta stream: a membership flipped by state resolution
        # shows up here even when no new member event of the user arrived.
        changes = await self._memberships.get_membership_changes(req.user_id, since, req.upto)
        by_room: dict[str, list[MembershipChange]] = {}
        for change in changes:
            by_room.setdefault(change.room_id, []).append(change)
        plans: list[_Plan] = []
        invites: list[Membership] = []
        knocks: list[Membership] = []
        if by_room:
            wanted = {c.event_id for cs in by_room.values() for c in cs if c.event_id}
            wanted |= {cs[0].prev_event_id for cs in by_room.values() if cs[0].prev_event_id}
            member_events = await self._events.get_events(wanted, allow_rejected=True)
            forgotten: set[str] | None = None
            for room_id, room_changes in by_room.items():
                last = room_changes[-1]
                last_id, last_pos = last.event_id, last.stream_ordering
                seen = [
                    member_events[c.event_id].membership if c.event_id in member_events else None
                    for c in room_changes
                ]
                prev = member_events.get(room_changes[0].prev_event_id or "")
                joined_at_since = prev is not None and prev.membership == "join"
                stayed_joined = joined_at_since and all(m == "join" for m in seen)
                latest = seen[-1]
                if latest == "join":
                    # A room joined since `since` is sent as in an initial sync: its
                    # timeline reaches back before `since` (as history visibility lets
                    # the user see), `limited` when there is more, with full state.
                    plans.append(
                        _Plan(
                            room_id,
                            "join",
                            since if stayed_joined else None,
                            req.upto,
                            full_state=not stayed_joined,
                            newly_joined=not stayed_joined,
                        )
                    )
                elif latest == "invite" and last_id is not None:
                    invites.append(Membership(room_id, req.user_id, "invite", last_id, last_pos))
                elif latest == "knock" and last_id is not None:
                    knocks.append(Membership(room_id, req.user_id, "knock", last_id, last_pos))
                else:
                    if forgotten is None:
                        forgotten = await self._memberships.forgotten_rooms(req.user_id)
                    if room_id in forgotten:
                        continue
                    was_ever_joined = joined_at_since or "join" in seen
                    plans.append(
                        _Plan(
                            room_id,
                            "leave",
                            since,
                            last_pos,
                            full_state=was_ever_joined and not joined_at_since,
                            no_state=not was_ever_joined,
                            end_event=last_id,
                        )
                    )
        steady = [r for r in joined if r not in by_room]
        if req.full_state:
            active = set(steady)
        else:
            active = await self._events.get_rooms_changed_between(steady, since, req.upto)
        for room_id in steady:
            if room_id in active:
                plans.append(_Plan(room_id, "join", since, req.upto, full_state=req.full_state))
        if req.full_state and req.filter.include_leave:
            planned = {p.room_id for p in plans}
            forgotten_rooms = await self._memberships.forgotten_rooms(req.user_id)
            departed = [
                m
                for room_id, m in memberships.items()
                if m.membership in ("leave", "ban")
                and room_id not in planned
                and room_id not in forgotten_rooms
            ]
            ever_joined = await self._memberships.rooms_ever_joined(
                req.user_id, (m.room_id for m in departed)
            )
            for m in departed:
                upper = min(m.stream_ordering or req.upto, req.upto)
                plans.append(
                    _Plan(
                        m.room_id,
                        "leave",
                        since,
                        upper,
                        True,
                        no_state=m.room_id not in ever_joined,
                        end_event=m.event_id,
                    )
                )
        return plans, invites, knocks

    async def _peek_plans(
        self, req: RoomsRequest, memberships: Mapping[str, Membership]
    ) -> list[_Plan]:
        """Peeked rooms (MSC2753) still world-readable and not joined: a peek new to
        the token is sent whole, as a newly joined room; an older one when it changed."""
        plans: list[_Plan] = []
        steady: list[str] = []
        for room_id, new in sorted(req.peeks.items()):
            m = memberships.get(room_id)
            if m is not None and m.membership == "join":
                continue  # under rooms.join (joining ends the peek)
            if await self._visibility.current_visibility(room_id) != "world_readable":
                continue
            if new or req.since is None:
                plans.append(_Plan(room_id, "peek", None, req.upto, full_state=True))
            else:
                steady.append(room_id)
        if steady:
            assert req.since is not None
            if req.full_state:
                active = set(steady)
            else:
                active = await self._events.get_rooms_changed_between(steady, req.since, req.upto)
            plans.extend(
                _Plan(room_id, "peek", req.since, req.upto, full_state=req.full_state)
                for room_id in steady
                if room_id in active
            )
        return plans

    # --- timelines -----------------------------------------------------------------------

    async def _load_timelines(
        self, req: RoomsRequest, plans: Sequence[_Plan], joined: frozenset[str]
    ) -> None:
        limit = req.filter.timeline_limit
        tfilter = req.filter.timeline
        # Many rooms per query, so refill.collect (one source) does not fit; the batch
        # sizes follow the same schedule.
        schedule = refill.FetchSchedule(
            limit + 1 if tfilter.is_noop else 4 * limit + 1,
            max(MAX_FETCH, limit + 1),
            MAX_REFILL_ROUNDS + 1,
        )
        pending = list(plans)
        readable = frozenset(p.room_id for p in plans if p.section in ("join", "peek"))
        for round_, fetch in enumerate(schedule.sizes()):
            ranges = [
                (p.room_id, p.lower, p.scanned_to - 1 if p.scanned_to is not None else p.upper)
                for p in pending
            ]
            fetched = await self._events.get_recent_events_for_ranges(ranges, fetch)
            candidates: list[StoredEvent] = []
            for p in pending:
                rows = fetched.get(p.room_id, [])
                if len(rows) < fetch:
                    p.exhausted = True
                if rows:
                    p.scanned_to = rows[-1].meta.stream_ordering
                candidates.extend(
                    pair
                    for pair in rows
                    if tfilter.matches(
                        pair.event.type, pair.event.sender, pair.event.room_id, pair.event.content
                    )
                    and (pair.event.state_key is not None or pair.event.sender not in req.ignored)
                )
            visible = await self._visible_timeline(req, candidates, joined, readable)
            by_room: dict[str, list[StoredEvent]] = {}
            for pair in visible:
                by_room.setdefault(pair.event.room_id, []).append(pair)
            still: list[_Plan] = []
            for p in pending:
                p.events.extend(by_room.get(p.room_id, []))
                if len(p.events) > limit:
                    p.events = p.events[:limit]
                    p.limited = True
                elif not p.exhausted:
                    if round_ == MAX_REFILL_ROUNDS:
                        p.limited = True
                    else:
                        still.append(p)
            if not still:
                break
            pending = still

    async def _visible_timeline(
        self,
        req: RoomsRequest,
        candidates: list[StoredEvent],
        joined: frozenset[str],
        readable: frozenset[str],
    ) -> list[StoredEvent]:
        """The candidates history visibility lets the user see, in order; and in the
        timelines of joined and peeked rooms (`readable`), every state event that is
        still part of the room's current state, whatever the visibility (as Synapse
        does): the reader may read it with /state anyway. So a client that rejoins a
        `joined`-visibility room sees who joined while it was away in the timeline that
        rebuilds its member list, and a peeker of a world-readable room gets the state
        set before it became world-readable (its m.room.create first of all)."""
        state_rooms = {
            e.room_id for e, _ in candidates if e.state_key is not None and e.room_id in readable
        }
        current = await self._state.get_current_state_for_rooms(state_rooms) if state_rooms else {}
        always = {
            e.event_id
            for e, meta in candidates
            if e.state_key is not None
            and meta.rejected_reason is None
            and current.get(e.room_id, {}).get((e.type, e.state_key)) == e.event_id
        }
        rest = [pair for pair in candidates if pair.event.event_id not in always]
        shown = await self._visibility.filter_events(req.user_id, rest, joined_rooms=joined)
        if not always:
            return shown
        kept = {pair.event.event_id: pair for pair in shown}
        return [
            kept.get(pair.event.event_id, pair)
            for pair in candidates
            if pair.event.event_id in always or pair.event.event_id in kept
        ]

    # --- state ---------------------------------------------------------------------------

    async def _fill_rooms(
        self,
        req: RoomsRequest,
        plans: list[_Plan],
        joined: frozenset[str],
        rooms: dict[str, dict[str, Any]],
    ) -> tuple[bool, frozenset[str]]:
        """Fills the rooms' entries; (whether any was added, the newly joined users)."""
        await self._load_timelines(req, plans, joined)
        end_metas = await self._events.get_events_with_meta(
            p.end_event for p in plans if p.end_event is not None
        )
        for p in plans:
            # A room never joined (an invite or knock from another server, then left):
            # its leave is an out-of-band event, in no timeline of the room, yet the one
            # thing to show for it (as Synapse does).
            ended = end_metas.get(p.end_event or "")
            if p.no_state and not p.events and ended is not None and ended.meta.outlier:
                position = ended.meta.stream_ordering
                if position is not None and (p.lower is None or position > p.lower):
                    p.events = [ended]
        # The state each room's `state` section is measured at: before the timeline's
        # first event (with use_state_after, the room's state at the end of the window);
        # with no timeline, the room's state at the end of its window. "The room's state
        # at a position" is its current state then (the resolution of its forward
        # extremities, from the current-state-delta stream), not the state after its
        # latest event, which differ after a fork.
        target_groups: dict[str, int] = {}
        at_upto: list[str] = []
        for p in plans:
            if p.end_event is not None and p.end_event in end_metas and not p.events:
                group = end_metas[p.end_event].meta.state_after
            elif p.events and not req.use_state_after:
                group = p.events[-1].meta.state_before
            elif p.events and p.end_event is not None:
                group = p.events[0].meta.state_after  # a departure: the state it left
            else:
                at_upto.append(p.room_id)
                continue
            if group is not None:
                target_groups[p.room_id] = group
        delta_rooms = [p.room_id for p in plans if not p.full_state and not p.no_state]
        maps = await self._state.get_state_ids_for_groups(set(target_groups.values()))
        upto_states = await self._state.get_current_state_at(at_upto, req.upto)
        # What the client holds for `since`: with use_state_after, the room's state as
        # that response gave it; otherwise its state after the events it was sent (a
        # client applies timeline state events), so a branch that lost state resolution
        # is corrected by this response.
        since_states: dict[str, Mapping[StateKey, str]] = {}
        if delta_rooms and req.since is not None and req.use_state_after:
            since_states = await self._state.get_current_state_at(delta_rooms, req.since)
        elif delta_rooms and req.since is not None:
            since_groups = await self._events.get_state_groups_at(delta_rooms, req.since)
            since_maps = await self._state.get_state_ids_for_groups(set(since_groups.values()))
            since_states = {r: since_maps[g] for r, g in since_groups.items()}
        empty: Mapping[StateKey, str] = {}

        lazy = req.filter.lazy_load_members
        redundant = req.filter.state.include_redundant_members
        known = self._lazy.known(req.user_id, req.device_id, req.since_token) if lazy else {}
        new_known: dict[str, Mapping[str, str]] = dict(known)
        state_ids: dict[str, dict[StateKey, str]] = {}
        targets: dict[str, Mapping[StateKey, str]] = {}
        for p in plans:
            group = target_groups.get(p.room_id)
            target: Mapping[StateKey, str] = (
                maps.get(group, empty) if group is not None else upto_states.get(p.room_id, empty)
            )
            targets[p.room_id] = target
            if p.no_state:
                state_ids[p.room_id] = {}
                continue
            if p.full_state:
                chosen = dict(target)
            else:
                before = since_states.get(p.room_id, empty)
                chosen = (
                    {}
                    if before is target
                    else {k: v for k, v in target.items() if before.get(k) != v}
                )
            if lazy:
                chosen = self._lazy_members(req, p, target, chosen, known, new_known, redundant)
            state_ids[p.room_id] = chosen
        wanted_state = {eid for ids in state_ids.values() for eid in ids.values()}
        state_events = await self._events.get_events_with_meta(wanted_state)
        sfilter = req.filter.state
        state_pairs: dict[str, list[StoredEvent]] = {}
        for p in plans:
            in_timeline = set() if req.use_state_after else {e.event_id for e, _ in p.events}
            pairs = [
                state_events[eid]
                for eid in state_ids[p.room_id].values()
                if eid in state_events and eid not in in_timeline
            ]
            state_pairs[p.room_id] = [
                pair
                for pair in pairs
                if sfilter.matches(
                    pair.event.type, pair.event.sender, pair.event.room_id, pair.event.content
                )
            ]
        # Incremental rooms left with nothing to show (their new events all filtered
        # out or invisible, and no state change the filters let through) are left out.
        plans = [
            p
            for p in plans
            if p.events or p.full_state or p.section == "leave" or state_pairs[p.room_id]
        ]
        if not plans:
            if lazy:
                self._lazy.record(req.user_id, req.device_id, req.next_token, new_known)
            return False, frozenset()

        opts = FormatOptions(
            req.user_id,
            req.device_id,
            include_room_id=False,
            event_format=req.filter.event_format,
            event_fields=req.filter.event_fields,
        )
        # Everything is formatted in one batch.
        batch: list[StoredEvent] = []
        spans: list[tuple[_Plan, int, int]] = []
        for p in plans:
            start = len(batch)
            batch.extend(reversed(p.events))
            mid = len(batch)
            batch.extend(state_pairs[p.room_id])
            spans.append((p, start, mid))
        formatted = await self._formatter.format(batch, opts)
        summaries = await self._summaries(req.user_id, plans, targets, batch)
        has_data = False
        for i, (p, start, mid) in enumerate(spans):
            end = spans[i + 1][1] if i + 1 < len(spans) else len(batch)
            timeline_events = formatted[start:mid]
            state_section = formatted[mid:end]
            entry: dict[str, Any] = {
                "timeline": {
                    "events": timeline_events,
                    "limited": p.limited or p.newly_joined,
                    "prev_batch": pagination_token(_prev_batch(p)),
                },
                req.state_key: {"events": state_section},
            }
            if p.section in ("join", "peek"):
                entry["summary"] = summaries.get(p.room_id, {})
            rooms[p.section][p.room_id] = entry
            has_data = True
        if lazy:
            self._lazy.record(req.user_id, req.device_id, req.next_token, new_known)
        newcomers: frozenset[str] = frozenset()
        if req.since is not None:
            newcomers = await self._newcomers(req.user_id, plans, state_pairs)
        return has_data, newcomers

    async def _newcomers(
        self,
        user_id: str,
        plans: Sequence[_Plan],
        state_pairs: Mapping[str, Sequence[StoredEvent]],
    ) -> frozenset[str]:
        """RoomsResult.newly_joined_users for the joined rooms of an incremental sync."""
        users: set[str] = set()
        new_rooms: list[str] = []
        for p in plans:
            if p.section != "join":
                continue
            if p.newly_joined:
                new_rooms.append(p.room_id)
            for ev, _ in (*p.events, *state_pairs[p.room_id]):
                if (
                    ev.type == "m.room.member"
                    and ev.state_key is not None
                    and ev.membership in ("join", "invite", "knock")
                ):
                    users.add(ev.state_key)
        if new_rooms:
            for members in (await self._memberships.get_joined_users_for_rooms(new_rooms)).values():
                users |= members
        users.discard(user_id)
        return frozenset(users)

    def _lazy_members(
        self,
        req: RoomsRequest,
        p: _Plan,
        target: Mapping[StateKey, str],
        chosen: dict[StateKey, str],
        known: KnownMembers,
        new_known: dict[str, Mapping[str, str]],
        redundant: bool,
    ) -> dict[StateKey, str]:
        """Lazy-loading members (spec): of the member events the state would hold, only
        the timeline's senders' (and, when the room is sent with full state, the user's
        own, so the client knows it is in the room), each unless this client already has
        it (include_redundant_members: even then). A room sent as a delta keeps every
        membership that changed between `since` and the timeline's start: the state
        section is all the state of the gap, so a client learns who joined or left while
        the timeline skipped it (as Synapse sends gapped syncs)."""
        wanted = {e.sender for e, _ in p.events}
        if p.full_state:
            wanted.add(req.user_id)
            out = {k: v for k, v in chosen.items() if k[0] != "m.room.member"}
        else:
            out = dict(chosen)
        room_known = known.get(p.room_id, {})
        room_new = dict(room_known)
        for user in wanted:
            key = ("m.room.member", user)
            eid = target.get(key)
            if eid is not None and (redundant or room_known.get(user) != eid):
                out[key] = eid
        for (etype, state_key), eid in out.items():
            if etype == "m.room.member":
                room_new[state_key] = eid
        for ev, _ in p.events:
            if ev.type == "m.room.member" and ev.state_key is not None:
                room_new[ev.state_key] = ev.event_id
        new_known[p.room_id] = room_new
        return out

    async def _summaries(
        self,
        user_id: str,
        plans: Sequence[_Plan],
        targets: Mapping[str, Mapping[StateKey, str]],
        batch: Sequence[StoredEvent],
    ) -> dict[str, JsonDict]:
        """m.heroes and member counts, for joined rooms whose membership may have
        changed in the client's view (full state, or member events sent)."""
        touched = {e.room_id for e, _ in batch if e.type == "m.room.member"}
        rooms = [
            p.room_id
            for p in plans
            if p.section in ("join", "peek") and (p.full_state or p.room_id in touched)
        ]
        if not rooms:
            return {}
        summaries = await self._memberships.get_room_summaries(rooms, MAX_HEROES + 1)
        # The room's name and alias as of the end of the timeline: the state the
        # response starts from (before the timeline), then the timeline's own changes.
        naming_keys = (("m.room.name", ""), ("m.room.canonical_alias", ""))
        by_room = {p.room_id: p for p in plans}
        naming_ids: dict[str, list[str]] = {}
        for room_id in rooms:
            current = {k: targets[room_id][k] for k in naming_keys if k in targets[room_id]}
            for ev, _ in reversed(by_room[room_id].events):  # oldest first
                if ev.state_key is not None and (ev.type, ev.state_key) in naming_keys:
                    current[(ev.type, ev.state_key)] = ev.event_id
            naming_ids[room_id] = list(current.values())
        naming = await self._events.get_events(eid for ids in naming_ids.values() for eid in ids)
        out: dict[str, JsonDict] = {}
        for room_id in rooms:
            s = summaries[room_id]
            summary: JsonDict = {
                "m.joined_member_count": s.joined,
                "m.invited_member_count": s.invited,
            }
            named = any(
                (naming[eid].content.get("name") or naming[eid].content.get("alias"))
                for eid in naming_ids[room_id]
                if eid in naming
            )
            if not named:
                others = [u for u, m in s.members if u != user_id and m in ("join", "invite")]
                if not others:
                    others = [u for u, _ in s.members if u != user_id]
                summary["m.heroes"] = others[:MAX_HEROES]
            out[room_id] = summary
        return out

    # --- invites and knocks --------------------------------------------------------------

    async def stripped_state(
        self,
        user_id: str,
        device_id: str | None,
        memberships: Sequence[Membership],
        key: str,
        ignored: frozenset[str] = frozenset(),
    ) -> dict[str, list[JsonDict]]:
        """Per room, the `invite_state` (key "invite_state") or `knock_state` events /sync
        gives for these memberships (sliding sync shows the same)."""
        req = RoomsRequest(
            user_id=user_id,
            device_id=device_id,
            filter=parse_sync_filter({}),
            since=None,
            upto=0,
            full_state=False,
            use_state_after=False,
            since_token=None,
            next_token="",
            ignored=ignored,
        )
        rooms = await self._stripped_rooms(req, memberships, key)
        return {room_id: entry[key]["events"] for room_id, entry in rooms.items()}

    async def _stripped_rooms(
        self, req: RoomsRequest, memberships: Sequence[Membership], key: str
    ) -> dict[str, JsonDict]:
        """invite_state / knock_state: stripped state at the membership event, then the
        event itself."""
        found = await self._events.get_events_with_meta(m.event_id for m in memberships)
        pairs = [
            found[m.event_id]
            for m in memberships
            if m.event_id in found
            and not (key == "invite_state" and found[m.event_id].event.sender in req.ignored)
        ]
        keys: set[StateKey] = {(t, "") for t in STRIPPED_STATE_TYPES}
        keys |= {("m.room.member", ev.sender) for ev, _ in pairs}
        groups = [meta.state_before for _, meta in pairs if meta.state_before is not None]
        entries = await self._state.get_state_entries_for_groups(groups, keys)
        ids = {eid for entry in entries.values() for eid in entry.values()}
        state_events = await self._events.get_events(ids)
        opts = FormatOptions(
            req.user_id,
            req.device_id,
            include_room_id=False,
            event_format=req.filter.event_format,
        )
        formatted = await self._formatter.format(pairs, opts)
        out: dict[str, JsonDict] = {}
        for (event, meta), own in zip(pairs, formatted, strict=True):
            carried = event.unsigned.get(
                "invite_room_state" if key == "invite_state" else "knock_room_state"
            )
            stripped: list[JsonDict]
            if isinstance(carried, list):
                stripped = [e for e in carried if isinstance(e, dict)]
            else:
                entry = entries.get(meta.state_before or -1, {})
                wanted = [(t, "") for t in STRIPPED_STATE_TYPES]
                wanted.append(("m.room.member", event.sender))
                stripped = [
                    stripped_state_event(state_events[entry[k]])
                    for k in wanted
                    if k in entry and entry[k] in state_events and k[1] != req.user_id
                ]
            out[event.room_id] = {key: {"events": [*stripped, own]}}
        return out


def _prev_batch(p: _Plan) -> int:
    """Where paging back from a room's timeline starts: before its first event; for a
    timeline read from the room's start that holds all of it (not limited), at its end,
    as Synapse answers, so /messages from it gives the same events again rather than
    nothing (clients and SyTest page from there; the spec lets prev_batch be left out
    when nothing is earlier, never promises an empty page); with no events, where the
    window starts."""
    if p.events and (p.lower is not None or p.limited):
        return (p.events[-1].meta.stream_ordering or 0) - 1
    if p.events:
        return p.upper
    return p.lower if p.lower is not None else p.upper
