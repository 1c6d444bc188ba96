"""State resolution: merging the room states of several DAG branches into one.

Owns the three algorithms the room versions use (spec: "Room Version 1 > State
resolution", "Room Version 2 > State resolution", "Room Version 12 > State resolution"):

* v1 (room version 1): conflicts resolved by depth and sha1(event ID), auth events first;
* v2 (room versions 2-11): power events in reverse topological power order, then the
  rest in mainline order, each pass through the iterative auth checks;
* v2.1 (room version 12, MSC4297): v2 with the first auth pass starting from an empty
  state and the conflicted state subgraph added to the full conflicted set.

Everything is computed over preloaded events; when something is missing the caller gets
`MissingEventsError` naming the event IDs to fetch before retrying. The result depends
only on the inputs, never on their order.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain
from operator import attrgetter

from starling.protocol.auth_rules import auth_types_for_event, check_auth_rules
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import RoomVersion, StateResAlgorithm

__all__ = [
    "MissingEventsError",
    "auth_chain",
    "resolve_state",
    "state_set_from_ids",
]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

_NO_IDS: frozenset[str] = frozenset()
_AUTH_IDS = attrgetter("auth_event_ids")


class MissingEventsError(Exception):
    """Resolution needs events that were not supplied; fetch them and call again."""

    def __init__(self, event_ids: Iterable[str]) -> None:
        self.event_ids: frozenset[str] = frozenset(event_ids)
        shown = ", ".join(sorted(self.event_ids)[:5])
        more = "" if len(self.event_ids) <= 5 else f" and {len(self.event_ids) - 5} more"
        super().__init__(f"state resolution needs {len(self.event_ids)} events: {shown}{more}")


def state_set_from_ids(ids: Iterable[str], events: Mapping[str, Event]) -> dict[StateKey, str]:
    """A state map from a list of state event IDs, keyed by each event's (type, state_key).

    This is how `starling debug resolve-state` and the fixtures describe state sets.
    """
    state: dict[StateKey, str] = {}
    missing = [i for i in ids if i not in events]
    if missing:
        raise MissingEventsError(missing)
    for event_id in ids:
        event = events[event_id]
        if event.state_key is None:
            raise ValueError(f"{event_id} is not a state event")
        key = event.state_map_key
        other = state.get(key)
        if other is not None and other != event_id:
            raise ValueError(f"{event_id} and {other} are both in the state set for {key}")
        state[key] = event_id
    return state


def auth_chain(event_ids: Iterable[str], events: Mapping[str, Event]) -> set[str]:
    """Every event reachable from `event_ids` through `auth_events` links.

    The starting events are not included unless another start reaches them. Raises
    `MissingEventsError` with every unknown event met on the way.
    """
    missing: set[str] = set()
    starts = list(event_ids)
    result = _closure(_auth_ids_of(starts, events, missing), events, missing)
    if missing:
        raise MissingEventsError(missing)
    return result


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Mapping[str, Event],
    *,
    rejected_event_ids: AbstractSet[str] = _NO_IDS,
) -> dict[StateKey, str]:
    """Resolve `state_sets` (state maps of event IDs) into one state map.

    `events` must hold every event of the state sets and their full auth chains.
    `rejected_event_ids` names events rejected on receipt: the iterative auth checks
    never fall back to them as auth events (v2 and v2.1).
    """
    if not state_sets:
        return {}
    if room_version.state_res is StateResAlgorithm.V1:
        return _resolve_v1(room_version, state_sets, events)
    return _resolve_v2(room_version, state_sets, events, rejected_event_ids)


# --- shared pieces ------------------------------------------------------------------------


def _separate(
    state_sets: Sequence[Mapping[StateKey, str]], *, missing_key_conflicts: bool
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split into the unconflicted state map and the conflicted candidates per key.

    In v2 a key absent from some state set is conflicted (it is not "present in every
    state map with the same value"); in v1 only differing event IDs conflict.
    """
    first, *rest = state_sets
    conflicted: dict[StateKey, set[str]] = {}
    if not rest:
        return dict(first), conflicted
    # With thousands of agreed keys and a few hundred conflicts, this filter is most of
    # the work: one dict lookup per key and state set.
    unconflicted = {k: v for k, v in first.items() if rest[0].get(k) == v}
    for state in rest[1:]:
        unconflicted = {k: v for k, v in unconflicted.items() if state.get(k) == v}
    for state in state_sets:
        for key in state.keys() - unconflicted.keys():
            conflicted.setdefault(key, set()).add(state[key])
    if not missing_key_conflicts:
        for key in [k for k, ids in conflicted.items() if len(ids) == 1]:
            unconflicted[key] = conflicted.pop(key).pop()
    return unconflicted, conflicted


def _auth_ids_of(
    event_ids: Iterable[str], events: Mapping[str, Event], missing: set[str]
) -> set[str]:
    out: set[str] = set()
    for event_id in event_ids:
        event = events.get(event_id)
        if event is None:
            missing.add(event_id)
        else:
            out.update(event.auth_event_ids)
    return out


def _closure(
    starts: Iterable[str],
    events: Mapping[str, Event],
    missing: set[str],
    stop: AbstractSet[str] = _NO_IDS,
) -> set[str]:
    """`starts` plus their auth ancestors, never entering `stop` (which must be closed
    under ancestry). Unknown IDs go to `missing`."""
    seen = set(starts)
    seen.difference_update(stop)
    frontier = seen
    # Level by level with set operations: the per-event Python work is one lookup.
    while frontier:
        try:
            # The whole level in C: map/attrgetter/chain never enter Python code.
            found = set(chain.from_iterable(map(_AUTH_IDS, map(events.__getitem__, frontier))))
        except KeyError:
            found = set()
            for event_id in frontier:
                event = events.get(event_id)
                if event is None:
                    missing.add(event_id)
                else:
                    found.update(event.auth_event_ids)
        found -= seen
        found.difference_update(stop)
        seen |= found
        frontier = found
    seen -= missing
    return seen


def _cited_by(starts: Iterable[str], events: Mapping[str, Event]) -> dict[str, list[str]]:
    """The reverse auth links among `starts` and their ancestors: auth event -> the
    events citing it. Every event must be present."""
    cited_by: dict[str, list[str]] = {}
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        event_id = stack.pop()
        if event_id in seen:
            continue
        seen.add(event_id)
        for auth_id in events[event_id].auth_event_ids:
            cited_by.setdefault(auth_id, []).append(event_id)
            if auth_id not in seen:
                stack.append(auth_id)
    return cited_by


def _create_event_for(event: Event, events: Mapping[str, Event]) -> Event | None:
    """The room's create event as the auth rules see it from `event`'s point of view:
    from its auth events, or (room version 12) implied by its room ID."""
    if event.type == "m.room.create" and event.state_key == "":
        return event
    for auth_id in event.auth_event_ids:
        auth_event = events.get(auth_id)
        if auth_event is not None and auth_event.state_map_key == CREATE_KEY:
            return auth_event
    if event.room_version.room_id_from_create_event and event.room_id.startswith("!"):
        return events.get("$" + event.room_id[1:])
    return None


def _is_power_event(event: Event) -> bool:
    if event.state_key is None:
        return False
    if event.type in ("m.room.power_levels", "m.room.join_rules"):
        return event.state_key == ""
    if event.type == "m.room.member":
        return event.membership in ("leave", "ban") and event.sender != event.state_key
    return False


# --- v2 and v2.1 --------------------------------------------------------------------------


def _resolve_v2(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Mapping[str, Event],
    rejected: AbstractSet[str],
) -> dict[StateKey, str]:
    v2_1 = room_version.state_res is StateResAlgorithm.V2_1
    unconflicted, conflicted_by_key = _separate(state_sets, missing_key_conflicts=True)
    if not conflicted_by_key:
        return unconflicted
    conflicted: set[str] = set().union(*conflicted_by_key.values())

    # Auth difference. Everything the unconflicted events reach is in every state set's
    # auth chain, so only the part reachable from the conflicted events without passing
    # through that common region can differ. Like Synapse (and every deployed server),
    # a state set's auth chain here counts the state set's own events too.
    missing: set[str] = set()
    common = _closure(unconflicted.values(), events, missing)
    reach: list[set[str]] = []
    for state in state_sets:
        own = [state[key] for key in conflicted_by_key if key in state]
        reach.append(_closure(own, events, missing, stop=common))
    if missing:
        raise MissingEventsError(missing)
    full_conflicted = reach[0].union(*reach[1:]) - reach[0].intersection(*reach[1:])
    full_conflicted |= conflicted
    if v2_1:
        full_conflicted |= _conflicted_subgraph(conflicted, events)

    # Step 1: power events and their auth ancestors within the full conflicted set.
    fcs_parents = _parents_within(full_conflicted, events)
    power = [e for e in full_conflicted if _is_power_event(events[e])]
    selected: set[str] = set()
    stack = list(power)
    while stack:
        event_id = stack.pop()
        if event_id not in selected:
            selected.add(event_id)
            stack.extend(fcs_parents[event_id])
    power_order = _reverse_topological_power_order(selected, fcs_parents, events)

    # Step 2: v2 starts from the unconflicted state, v2.1 from nothing.
    partial: dict[StateKey, str] = {} if v2_1 else dict(unconflicted)
    _iterative_auth_checks(power_order, partial, events, room_version, rejected)

    # Steps 3 and 4: everything else, in mainline order of the resolved power levels.
    others = [e for e in full_conflicted if e not in selected]
    others = _mainline_order(others, partial.get(POWER_LEVELS_KEY), events)
    _iterative_auth_checks(others, partial, events, room_version, rejected)

    # Step 5.
    partial.update(unconflicted)
    return partial


def _conflicted_subgraph(conflicted: set[str], events: Mapping[str, Event]) -> set[str]:
    """Events on some auth_events path between two conflicted events, endpoints included:
    the ancestors of the conflicted events from which a conflicted event is reachable
    again, found by walking the recorded links forward from the conflicted events."""
    cited_by = _cited_by(conflicted, events)
    subgraph = set(conflicted)
    stack = list(conflicted)
    while stack:
        for citing in cited_by.get(stack.pop(), ()):
            if citing not in subgraph:
                subgraph.add(citing)
                stack.append(citing)
    return subgraph


def _parents_within(members: set[str], events: Mapping[str, Event]) -> dict[str, list[str]]:
    """For each event of `members`, its nearest auth ancestors that are also members,
    looking through auth events outside `members` (so the ordering respects the whole
    auth DAG, not only its direct links). Results for outside events are memoised."""
    through: dict[str, frozenset[str]] = {}  # outside event -> member ancestors
    empty: frozenset[str] = frozenset()

    entered: set[str] = set()

    def resolve(start: str) -> frozenset[str]:
        stack: list[tuple[str, bool]] = [(start, False)]
        while stack:
            event_id, expanded = stack.pop()
            if event_id in through:
                continue
            auth_ids = events[event_id].auth_event_ids
            if not expanded:
                if event_id in entered:
                    continue  # an auth cycle (only forgeable in rooms 1-2): cut it here
                entered.add(event_id)
                stack.append((event_id, True))
                stack.extend((a, False) for a in auth_ids if a not in members and a not in through)
                continue
            found: set[str] | None = None
            for a in auth_ids:
                if a in members:
                    found = found or set()
                    found.add(a)
                else:
                    below = through.get(a, empty)
                    if below:
                        found = found or set()
                        found |= below
            through[event_id] = frozenset(found) if found else empty
        return through[start]

    parents: dict[str, list[str]] = {}
    for event_id in members:
        found: set[str] = set()
        for a in events[event_id].auth_event_ids:
            if a in members:
                found.add(a)
            else:
                found |= through.get(a) or resolve(a)
        found.discard(event_id)
        parents[event_id] = sorted(found)
    return parents


def _sender_power(
    event: Event, events: Mapping[str, Event], cache: dict[tuple[str, str], PowerLevels]
) -> int | float:
    """The sender's power level as seen through the event's own auth events."""
    create = _create_event_for(event, events)
    power_levels: Event | None = None
    for auth_id in event.auth_event_ids:
        auth_event = events.get(auth_id)
        if auth_event is not None and auth_event.state_map_key == POWER_LEVELS_KEY:
            power_levels = auth_event
            break
    cache_key = (
        create.event_id if create is not None else "",
        power_levels.event_id if power_levels is not None else "",
    )
    levels = cache.get(cache_key)
    if levels is None:
        levels = PowerLevels.from_state(create, power_levels, event.room_version)
        cache[cache_key] = levels
    return levels.user_level(event.sender)


def _reverse_topological_power_order(
    selected: set[str], parents: Mapping[str, Sequence[str]], events: Mapping[str, Event]
) -> list[str]:
    """Kahn's algorithm over the auth DAG of `selected`, always taking the available
    event with the most powerful sender, then the earliest timestamp, then the lowest ID."""
    levels_cache: dict[tuple[str, str], PowerLevels] = {}
    children: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}
    ready: list[tuple[float, int, str]] = []
    for event_id in selected:
        own_parents = parents[event_id]
        waiting[event_id] = len(own_parents)
        for parent in own_parents:
            children.setdefault(parent, []).append(event_id)

    def key(event_id: str) -> tuple[float, int, str]:
        event = events[event_id]
        return (-_sender_power(event, events, levels_cache), event.origin_server_ts, event_id)

    for event_id, count in waiting.items():
        if count == 0:
            ready.append(key(event_id))
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        event_id = heapq.heappop(ready)[2]
        order.append(event_id)
        for child in children.get(event_id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, key(child))
    return order


def _power_levels_parent(event: Event, events: Mapping[str, Event]) -> str | None:
    for auth_id in event.auth_event_ids:
        auth_event = events.get(auth_id)
        if auth_event is not None and auth_event.state_map_key == POWER_LEVELS_KEY:
            return auth_id
    return None


def _mainline_order(
    event_ids: list[str], power_levels_id: str | None, events: Mapping[str, Event]
) -> list[str]:
    """Sort by mainline position (older mainline first, unrelated first of all), then
    timestamp, then event ID."""
    if not event_ids:
        return []
    position: dict[str, float] = {}  # power levels event -> mainline position it reaches
    index = 0
    current = power_levels_id
    while current is not None and current not in position:
        position[current] = index
        index += 1
        current = _power_levels_parent(events[current], events)

    def reached_from(start: str | None) -> float:
        path: list[str] = []
        current = start
        while current is not None and current not in position and current not in path:
            path.append(current)
            current = _power_levels_parent(events[current], events)
        found = position.get(current, math.inf) if current is not None else math.inf
        for visited in path:
            position[visited] = found
        return found

    def key(event_id: str) -> tuple[float, int, str]:
        event = events[event_id]
        return (
            -reached_from(_power_levels_parent(event, events)),
            event.origin_server_ts,
            event_id,
        )

    return sorted(event_ids, key=key)


def _iterative_auth_checks(
    order: Iterable[str],
    state: dict[StateKey, str],
    events: Mapping[str, Event],
    room_version: RoomVersion,
    rejected: AbstractSet[str],
) -> None:
    """Apply each event of `order` to `state` (in place) if the auth rules allow it
    against `state`, falling back to the event's own non-rejected auth events for the
    keys `state` lacks."""
    for event_id in order:
        event = events[event_id]
        if event.state_key is None:
            continue
        needed = auth_types_for_event(
            event.type, event.state_key, event.sender, event.content, room_version
        )
        auth_state: dict[StateKey, Event] = {}
        own: dict[StateKey, Event] | None = None
        for key in (*needed, CREATE_KEY):
            if key in auth_state:
                continue
            in_state = state.get(key)
            if in_state is not None:
                auth_state[key] = events[in_state]
                continue
            if own is None:
                own = {}
                for auth_id in event.auth_event_ids:
                    auth_event = events.get(auth_id)
                    if auth_event is not None and auth_id not in rejected:
                        own[auth_event.state_map_key] = auth_event
            fallback = own.get(key)
            if fallback is not None:
                auth_state[key] = fallback
        if CREATE_KEY not in auth_state:
            # Room version 12: the create event is implied by the room ID.
            create = _create_event_for(event, events)
            if create is not None and create.event_id not in rejected:
                auth_state[CREATE_KEY] = create
        if check_auth_rules(event, auth_state).allowed:
            state[event.state_map_key] = event_id


# --- v1 -----------------------------------------------------------------------------------


def _resolve_v1(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Mapping[str, Event],
) -> dict[StateKey, str]:
    unconflicted, conflicted_by_key = _separate(state_sets, missing_key_conflicts=False)
    if not conflicted_by_key:
        return unconflicted
    needed = set(unconflicted.values()).union(*conflicted_by_key.values())
    missing = needed.difference(events)
    if missing:
        raise MissingEventsError(missing)

    resolved = dict(unconflicted)
    sha1: dict[str, str] = {}

    def digest(event_id: str) -> str:
        value = sha1.get(event_id)
        if value is None:
            value = hashlib.sha1(event_id.encode("utf-8")).hexdigest()
            sha1[event_id] = value
        return value

    def allowed(
        event: Event, state: Mapping[StateKey, str], key: StateKey, current: str | None
    ) -> bool:
        auth_state: dict[StateKey, Event] = {}
        wanted = auth_types_for_event(
            event.type, event.state_key, event.sender, event.content, room_version
        )
        for wanted_key in (*wanted, CREATE_KEY):
            event_id = (
                current if wanted_key == key and current is not None else state.get(wanted_key)
            )
            if event_id is not None:
                auth_state[wanted_key] = events[event_id]
        return check_auth_rules(event, auth_state).allowed

    def resolve_auth_key(key: StateKey, state: Mapping[StateKey, str]) -> str:
        # Ascending depth, then descending sha1: take the first, then keep taking the
        # next while it is allowed on top of what was taken.
        candidates = sorted(conflicted_by_key[key], key=digest, reverse=True)
        candidates.sort(key=lambda e: events[e].depth)
        current = candidates[0]
        for event_id in candidates[1:]:
            if not allowed(events[event_id], state, key, current):
                break
            current = event_id
        return current

    for auth_key in (POWER_LEVELS_KEY, JOIN_RULES_KEY):
        if auth_key in conflicted_by_key:
            resolved[auth_key] = resolve_auth_key(auth_key, resolved)
    # Every member conflict is resolved against the same state (after join rules), so
    # the order in which keys are visited cannot matter.
    member_keys = sorted(k for k in conflicted_by_key if k[0] == "m.room.member")
    snapshot = dict(resolved)
    for key in member_keys:
        resolved[key] = resolve_auth_key(key, snapshot)

    snapshot = dict(resolved)
    for key in sorted(conflicted_by_key):
        if key in (POWER_LEVELS_KEY, JOIN_RULES_KEY) or key[0] == "m.room.member":
            continue
        # Highest depth, then lowest sha1, among those allowed. The spec does not say
        # what to do when none is; like Synapse, take the last (lowest depth) candidate.
        candidates = sorted(conflicted_by_key[key], key=digest)
        candidates.sort(key=lambda e: events[e].depth, reverse=True)
        choice = candidates[-1]
        for event_id in candidates:
            if allowed(events[event_id], snapshot, key, None):
                choice = event_id
                break
        resolved[key] = choice
    return resolved
