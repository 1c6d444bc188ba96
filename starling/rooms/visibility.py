"""History visibility: which events a user may read (spec: "History visibility" module).

An event is judged by the room's state *before* it: the history_visibility setting and
the user's membership then. A user joined at the time sees it; otherwise
`world_readable` shows it to anyone, `invited` to users invited at the time, `joined` to
no one else, and `shared` to users who are joined to the room now (so a user who left
sees history up to their departure, and no further). Two cases look at the event itself,
as Synapse does: a history_visibility change is judged by the more permissive of the old
and new settings, and a user's own membership event by the more permissive of their old
and new membership (so everyone sees their own leave).

An erased user's events (rooms/erasure.py) are shown in full only to users who were
joined when they were sent; whoever else may see them gets the redacted form (Synapse).

Judging is per distinct state group, not per event: messages between two state changes
share a group, so a page of a busy room costs one lookup of two state keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from starling.protocol.event import Event, StateKey
from starling.protocol.redaction import RedactionError, redact
from starling.rooms.erasure import ErasedUsers
from starling.rooms.retention import RetentionWindow
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import MembershipStore
from starling.storage.state import StateStore

HISTORY_VISIBILITY: StateKey = ("m.room.history_visibility", "")
# Most permissive first (Synapse's VISIBILITY_PRIORITY / MEMBERSHIP_PRIORITY).
VISIBILITY_PRIORITY = ("world_readable", "shared", "invited", "joined")
MEMBERSHIP_PRIORITY = ("join", "invite", "knock", "leave", "ban")


def effective_visibility(value: object) -> str:
    return value if isinstance(value, str) and value in VISIBILITY_PRIORITY else "shared"


def _membership(value: object) -> str:
    return value if isinstance(value, str) and value in MEMBERSHIP_PRIORITY else "leave"


def _more_permissive(a: str, b: str, order: Sequence[str]) -> str:
    return a if order.index(a) <= order.index(b) else b


def allowed(event: Event, user_id: str, visibility: str, membership: str, is_peeking: bool) -> bool:
    """The decision for one event, given the state before it."""
    if event.type == HISTORY_VISIBILITY[0] and event.state_key == "":
        visibility = _more_permissive(
            visibility,
            effective_visibility(event.content.get("history_visibility")),
            VISIBILITY_PRIORITY,
        )
    if event.type == "m.room.member" and event.state_key == user_id:
        new = _membership(event.membership)
        if new == "leave" and membership in ("join", "invite"):
            return True
        membership = _more_permissive(new, membership, MEMBERSHIP_PRIORITY)
    if visibility == "world_readable" or membership == "join":
        return True
    if visibility == "joined":
        return False
    if visibility == "invited":
        return membership == "invite"
    return not is_peeking  # shared


def _joined_at(event: Event, user_id: str, membership: str) -> bool:
    """Whether the user was joined when the event was sent (their own join counts)."""
    if event.type == "m.room.member" and event.state_key == user_id:
        return membership == "join" or event.membership == "join"
    return membership == "join"


def _redacted(pair: StoredEvent) -> StoredEvent:
    """The event as its redacted form (an erased sender's, for a later joiner)."""
    event = pair.event
    try:
        pdu = redact(event.pdu, event.room_version)
    except RedactionError:
        return pair
    return StoredEvent(Event(pdu, event.event_id, event.room_version), pair.meta)


class HistoryVisibility:
    def __init__(
        self,
        events: EventStore,
        state: StateStore,
        memberships: MembershipStore,
        retention: RetentionWindow | None = None,
        erased: ErasedUsers | None = None,
    ) -> None:
        self._events = events
        self._state = state
        self._memberships = memberships
        self._retention = retention
        self._erased = erased

    async def filter_events(
        self,
        user_id: str,
        pairs: Sequence[StoredEvent],
        *,
        joined_rooms: Iterable[str] | None = None,
    ) -> list[StoredEvent]:
        """The events the user may see, in the given order. Rejected events are dropped.

        `joined_rooms` (the rooms the user is joined to now) decides who is peeking; it
        is looked up when not given.
        """
        pairs = [p for p in pairs if p.meta.rejected_reason is None]
        if pairs and self._retention is not None:
            oldest = await self._retention.oldest_allowed({p.event.room_id for p in pairs})
            if oldest:
                # Expired messages are hidden until a purge job deletes them (Synapse);
                # state events stay.
                pairs = [
                    p
                    for p in pairs
                    if p.event.state_key is not None
                    or p.event.origin_server_ts
                    >= oldest.get(p.event.room_id, p.event.origin_server_ts)
                ]
        if not pairs:
            return []
        if joined_rooms is None:
            joined = set(await self._memberships.get_joined_rooms(user_id))
        else:
            joined = set(joined_rooms)
        decided = await self._state_decisions(user_id, {m.state_before for _, m in pairs})
        seen = [
            pair
            for pair in pairs
            if allowed(
                pair.event,
                user_id,
                *decided[pair.meta.state_before],
                pair.event.room_id not in joined,
            )
        ]
        if self._erased is None or not seen:
            return seen
        erased = await self._erased.erased_among(p.event.sender for p in seen)
        if not erased:
            return seen
        return [
            _redacted(pair)
            if pair.event.sender in erased
            and not _joined_at(pair.event, user_id, decided[pair.meta.state_before][1])
            else pair
            for pair in seen
        ]

    async def is_visible(self, user_id: str, pair: StoredEvent) -> bool:
        return bool(await self.filter_events(user_id, [pair]))

    async def visible_form(self, user_id: str, pair: StoredEvent) -> StoredEvent | None:
        """The event as the user may see it (redacted for an erased sender), or None."""
        seen = await self.filter_events(user_id, [pair])
        return seen[0] if seen else None

    async def _state_decisions(
        self, user_id: str, groups: Iterable[int | None]
    ) -> dict[int | None, tuple[str, str]]:
        """(visibility, membership) of the user in each state group."""
        wanted = [g for g in set(groups) if g is not None]
        member_key: StateKey = ("m.room.member", user_id)
        entries = await self._state.get_state_entries_for_groups(
            wanted, [HISTORY_VISIBILITY, member_key]
        )
        ids = {eid for entry in entries.values() for eid in entry.values()}
        events = await self._events.get_events(ids) if ids else {}
        out: dict[int | None, tuple[str, str]] = {None: ("shared", "leave")}
        for group in wanted:
            entry = entries.get(group, {})
            hv = events.get(entry.get(HISTORY_VISIBILITY, ""))
            member = events.get(entry.get(member_key, ""))
            out[group] = (
                effective_visibility(hv.content.get("history_visibility") if hv else None),
                _membership(member.membership if member else None),
            )
        return out

    async def current_visibility(self, room_id: str) -> str:
        state = await self._state.get_current_state_ids(room_id)
        eid = state.get(HISTORY_VISIBILITY)
        if eid is None:
            return "shared"
        events = await self._events.get_events([eid])
        hv = events.get(eid)
        return effective_visibility(hv.content.get("history_visibility") if hv else None)
