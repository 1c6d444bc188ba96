"""Device-list tracking: the device_lists stream and what /sync and /keys/changes report.

Two kinds of rows go on the stream (starling.storage.device_lists):
- a user's devices or cross-signing keys changed (written by the key services in the same
  transaction as the change);
- a user's membership of a room went into or out of "join", or became "invite" (written
  here, from the room event listener, batched).

For a reader U and a range (since, upto], `changes` reports:
- changed: users sharing a room with U now whose devices/keys changed in the range, plus
  users who newly share a room with U (U joined a room they are in, or they joined one of
  U's rooms), plus users invited into U's rooms (as Synapse: clients encrypt for invited
  members). U's own changes are included.
- left: users who left a room U is in, or were in a room U left, and now share no room
  with U.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from starling.protocol.event import Event
from starling.storage.device_lists import DeviceListStore
from starling.storage.e2ee_writes import DeviceChange, E2eeWrites
from starling.storage.memberships import MembershipStore
from starling.storage.streams import StreamIdGenerator

logger = logging.getLogger(__name__)

NotifyUsers = Callable[[Iterable[str]], None]
# (user_id, device IDs that changed - empty: cross-signing keys -, deleted, stream_id):
# told after the commit of each change everyone may see (federation sends it on).
DeviceChangeListener = Callable[[str, Sequence[str], bool, int], None]
# event IDs of member events -> the membership each one replaced (None: none before)
PreviousMemberships = Callable[[Sequence[str]], Awaitable[Mapping[str, str | None]]]
# Users who may no longer share a room with any of ours (someone left a room).
MaybeStoppedSharing = Callable[[set[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeviceListChanges:
    changed: list[str]
    left: list[str]


class DeviceListTracker:
    def __init__(
        self,
        writes: E2eeWrites,
        store: DeviceListStore,
        stream: StreamIdGenerator,
        memberships: MembershipStore,
        previous_memberships: PreviousMemberships,
        notify: NotifyUsers,
    ) -> None:
        self._writes = writes
        self._store = store
        self._stream = stream
        self._memberships = memberships
        self._previous_memberships = previous_memberships
        self._notify = notify
        self._pending: list[Event] = []
        self._flusher: asyncio.Task[None] | None = None
        self.listeners: list[DeviceChangeListener] = []
        self.on_left: MaybeStoppedSharing | None = None

    def current_position(self) -> int:
        return self._stream.current_position()

    async def audience(self, user_id: str) -> set[str]:
        """Who hears about ``user_id``'s device changes: everyone sharing a room, and the
        user."""
        users = await self._memberships.users_sharing_a_room(user_id)
        users.add(user_id)
        return users

    async def mark_changed(
        self,
        user_ids: Sequence[str],
        *,
        observer: str | None = None,
        notify: Iterable[str] = (),
        device_ids: Sequence[str] = (),
        deleted: bool = False,
    ) -> int:
        """These users' devices or keys changed (a write of the stream alone); see
        `announce`. The last stream position is returned."""
        change = DeviceChange(user_ids, observer, device_ids)
        (ids,) = await self._writes.add_device_changes([change])
        self.announce(change, ids, notify=notify, deleted=deleted)
        return ids[-1]

    def announce(
        self,
        change: DeviceChange,
        ids: Sequence[int],
        *,
        notify: Iterable[str] = (),
        deleted: bool = False,
    ) -> None:
        """After the commit of ``change`` (at stream positions ``ids``, one per device):
        wake ``notify`` (and the observer, if only they may see it), and tell the
        listeners of a change everyone may see (``device_ids``: which devices, none for
        cross-signing keys; ``deleted``: they were deleted), each device with its own
        position (its own federation `stream_id`)."""
        wake = set(notify)
        if change.observer is not None:
            wake.add(change.observer)
        self._notify(wake)
        if change.observer is None:
            for listener in self.listeners:
                for user_id in change.user_ids:
                    if not change.device_ids:
                        listener(user_id, [], deleted, ids[-1])
                        continue
                    for device_id, device_stream_id in zip(change.device_ids, ids, strict=True):
                        listener(user_id, [device_id], deleted, device_stream_id)

    async def new_position(self) -> int:
        """A fresh position on the stream, with nothing written at it (federation
        renumbers an update whose own position was overtaken by a later one)."""
        return await self._writes.new_device_list_position()

    async def mark_remote_changed(self, user_id: str) -> None:
        """Another server says its user's devices or keys changed: tell whoever shares a
        room with them (their /keys/changes and sync `device_lists`)."""
        audience = await self.audience(user_id)
        await self.mark_changed([user_id], notify=audience)

    # -- room memberships (from RoomEventService listeners)

    def on_new_event(self, event: Event, position: int) -> None:
        """RoomEventService listener: queue membership transitions to record."""
        if event.type != "m.room.member" or event.state_key is None:
            return
        self._pending.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def flush(self) -> None:
        """Wait until every queued membership change is on the stream."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._record_memberships(batch)
            except Exception:
                logger.exception("recording %d membership changes failed", len(batch))

    async def _record_memberships(self, events: Sequence[Event]) -> None:
        previous = await self._previous_memberships([e.event_id for e in events])
        rows: list[tuple[str, str, bool]] = []
        invites: list[tuple[str, str]] = []
        for event in events:
            assert event.state_key is not None
            before = previous.get(event.event_id)
            now_joined = event.membership == "join"
            was_joined = before == "join"
            if now_joined != was_joined:
                rows.append((event.room_id, event.state_key, now_joined))
            elif event.membership == "invite" and before != "invite":
                invites.append((event.room_id, event.state_key))
        if not rows and not invites:
            return
        await self._writes.add_memberships(rows, invites)
        wake: set[str] = {user_id for _, user_id, _ in rows}
        members = await self._memberships.get_joined_users_for_rooms(
            {r for r, _, _ in rows} | {r for r, _ in invites}
        )
        for users in members.values():
            wake |= users
        self._notify(wake)
        if self.on_left is not None:
            # Whoever left, and whoever stays in a room someone left, may share no room
            # with our users any more.
            maybe: set[str] = set()
            for room_id, user_id, joined in rows:
                if not joined:
                    maybe.add(user_id)
                    maybe |= members.get(room_id, set())
            if maybe:
                await self.on_left(maybe)

    # -- reading

    async def changes(self, user_id: str, since: int, upto: int) -> DeviceListChanges:
        if upto <= since:
            return DeviceListChanges([], [])
        joined_rooms = await self._memberships.get_joined_rooms(user_id)
        in_rooms = set(joined_rooms)
        sharing = await self.audience(user_id)
        newly_sharing: set[str] = set()
        maybe_left: set[str] = set()
        # The user's own transitions first, to know which rooms they were in.
        transitions, invites = await self._store.membership_and_invite_changes(
            user_id, joined_rooms, since, upto
        )
        rooms_left = {room for room, member, joined in transitions if member == user_id}
        rooms_left -= set(joined_rooms)
        if rooms_left:
            transitions = await self._store.membership_changes(
                user_id, set(joined_rooms) | rooms_left, since, upto
            )
        members = await self._memberships.get_joined_users_for_rooms(
            room_id for room_id, member, _ in transitions if member == user_id
        )
        for room_id, member, joined in transitions:
            if member == user_id:
                (newly_sharing if joined else maybe_left).update(members[room_id])
            else:
                (newly_sharing if joined else maybe_left).add(member)
        changed = await self._store.changed_users(user_id, sharing, since, upto)
        changed |= newly_sharing & sharing
        # Users invited into the user's rooms (Synapse's newly invited users: a client
        # encrypting for invited members starts tracking them).
        changed |= {m for room, m in invites if m != user_id and room in in_rooms}
        left = maybe_left - sharing
        return DeviceListChanges(sorted(changed), sorted(left))
