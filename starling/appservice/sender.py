"""Pushing events to application services: PUT /_matrix/app/v1/transactions/{txnId}
(spec: application-service-api "Pushing events").

One task per service with a URL. It reads the events stream from the service's stored
position, keeps the events the service is interested in, and stores them as the next
transaction while moving the position past them, in one database transaction
(`storage/appservice.py`). Stored transactions are sent oldest first, one at a time, each
under its own ID until the service accepts it: so delivery is ordered, survives restarts,
and a retried transaction carries the same ID (the service deduplicates on it). The loop is
`starling.delivery.loop.DeliveryLoop`, shared with outgoing webhooks: a failure waits as
the federation sender's `BackoffPolicy` says before the same transaction is tried again.
New events only wake the task; it never trusts in-memory callbacks for what to send.

A service is interested in an event (as Synapse decides) when its namespaces hold the
sender, the state key of a membership event, the room ID, one of the room's local
aliases, or a user joined to the room; its own sender counts as in its namespace.

Ephemeral data (typing, receipts, presence) for services with ``receive_ephemeral`` is
queued in memory and put into the next transaction (as ``ephemeral`` and MSC2409's
``de.sorunome.msc2409.ephemeral``); it is not kept across a restart, as it is ephemeral.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from starling.appservice.client import AppServiceClient
from starling.appservice.registration import AppService
from starling.appservice.registry import AppServiceRegistry
from starling.delivery.loop import Attempt, DeliveryLoop
from starling.federation.sender.backoff import BackoffPolicy
from starling.protocol.event import Event
from starling.storage.aliases import AliasStore
from starling.storage.appservice import AppServiceStore, Extras, QueuedTransaction
from starling.storage.events import EventStore, StoredEvent
from starling.storage.memberships import MembershipStore

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_TRANSACTION = 100
MAX_EPHEMERAL_PER_TRANSACTION = 100
MAX_QUEUED_EPHEMERAL = 1000
MAX_TO_DEVICE_REQUESTS = 20  # to-device sends (each up to 10,000 devices) per transaction
MAX_DEVICE_LIST_POSITIONS = 100
MAX_MEMBERSHIP_TRANSITIONS = 10_000


@dataclass(frozen=True)
class E2eePositions:
    """The current positions of the to_device and device_lists streams (app.py wires
    them once the end-to-end encryption services exist)."""

    to_device_position: Callable[[], int]
    device_list_position: Callable[[], int]


def client_event(stored: StoredEvent, now_ms: int) -> dict[str, Any]:
    """The Client-Server format of a room event, as transactions carry it."""
    event, meta = stored
    content = event.pdu.get("content")
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "content": content if isinstance(content, dict) else {},
        "sender": event.sender,
        "origin_server_ts": event.origin_server_ts,
        "room_id": event.room_id,
        "unsigned": {"age": max(0, now_ms - event.origin_server_ts)},
    }
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if meta.replaces_state is not None:
        out["unsigned"]["replaces_state"] = meta.replaces_state
    if event.type == "m.room.redaction" and event.redacts is not None:
        out["redacts"] = event.redacts
    return out


class _Interest:
    """Answers "is this service interested in this event" for one batch, loading each
    room's members and aliases at most once."""

    def __init__(self, memberships: MembershipStore, aliases: AliasStore) -> None:
        self._memberships = memberships
        self._aliases = aliases
        self._joined: dict[str, frozenset[str]] = {}
        self._room_aliases: dict[str, list[str]] = {}

    async def __call__(self, service: AppService, event: Event) -> bool:
        if service.owns_user(event.sender):
            return True
        if event.type == "m.room.member" and event.state_key is not None:
            if service.owns_user(event.state_key):
                return True
        if service.room_in_namespace(event.room_id):
            return True
        if service.aliases:
            aliases = self._room_aliases.get(event.room_id)
            if aliases is None:
                aliases = self._room_aliases[event.room_id] = await self._aliases.aliases_for_room(
                    event.room_id
                )
            if any(service.alias_in_namespace(a) for a in aliases):
                return True
        joined = self._joined.get(event.room_id)
        if joined is None:
            joined = self._joined[event.room_id] = await self._memberships.get_joined_users(
                event.room_id
            )
        return any(service.owns_user(u) for u in joined)


class AppServiceSender:
    def __init__(
        self,
        registry: AppServiceRegistry,
        store: AppServiceStore,
        events: EventStore,
        memberships: MembershipStore,
        aliases: AliasStore,
        client: AppServiceClient,
        current_position: Callable[[], int],
        *,
        backoff: BackoffPolicy | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._registry = registry
        self._store = store
        self._events = events
        self._memberships = memberships
        self._aliases = aliases
        self._client = client
        self._current_position = current_position
        self._backoff = backoff or BackoffPolicy()
        self._clock_ms = clock_ms
        self._loops: dict[str, DeliveryLoop[QueuedTransaction]] = {}
        self._e2ee: E2eePositions | None = None
        self._ephemeral: dict[str, list[dict[str, Any]]] = {}
        self.on_delivered: list[Callable[[str, int], Awaitable[None] | None]] = []
        # Set with workers on the processes that do not send to services: ephemeral data
        # goes over the cluster bus to the one that does (starling/cluster).
        self.forward: Callable[[dict[str, Any], list[str]], None] | None = None

    def use_e2ee(self, positions: E2eePositions) -> None:
        self._e2ee = positions

    def wake(self) -> None:
        """New to-device messages or device-list changes: the services look again."""
        for loop in self._loops.values():
            loop.wake.set()

    def _services(self) -> Sequence[AppService]:
        return [s for s in self._registry.services if s.url]

    async def start(self) -> None:
        position = self._current_position()
        for service in self._services():
            await self._store.start_at(service.id, position)
            loop = DeliveryLoop[QueuedTransaction](
                f"appservice-sender-{service.id}",
                oldest=functools.partial(self._store.oldest_pending, service.id),
                send=functools.partial(self._send, service),
                fill=functools.partial(self._build_next, service),
                policy=self._backoff,
            )
            self._loops[service.id] = loop
            loop.start()

    async def stop(self) -> None:
        loops = list(self._loops.values())
        self._loops.clear()
        for loop in loops:
            await loop.stop()

    def on_new_event(self, event: Event, position: int) -> None:
        """A room-events listener: only a wake-up (the tasks read the stream)."""
        for loop in self._loops.values():
            loop.wake.set()

    def add_ephemeral(self, edu: dict[str, Any], users: Sequence[str] = ()) -> None:
        """Queue ephemeral data for every ``receive_ephemeral`` service that owns one of
        `users` (or, with no users given, for all of them)."""
        if self.forward is not None:
            self.forward(edu, list(users))
            return
        for service in self._services():
            if not service.receive_ephemeral:
                continue
            if users and not any(service.owns_user(u) for u in users):
                continue
            queue = self._ephemeral.setdefault(service.id, [])
            if len(queue) >= MAX_QUEUED_EPHEMERAL:
                del queue[0]  # the oldest goes: a service that is down misses some
            queue.append(edu)
            loop = self._loops.get(service.id)
            if loop is not None:
                loop.wake.set()

    @property
    def wants_ephemeral(self) -> bool:
        return any(s.receive_ephemeral for s in self._services())

    async def room_ephemeral(self, room_id: str, edu: dict[str, Any]) -> None:
        """Typing or a receipt in a room: for the services with a user joined to it."""
        joined = await self._memberships.get_joined_users(room_id)
        if joined:
            self.add_ephemeral(edu, sorted(joined))

    async def presence(self, user_id: str, content: dict[str, Any]) -> None:
        """A local user's presence: for the services with a user sharing a room with them
        (or owning them)."""
        sharing = await self._memberships.users_sharing_a_room(user_id)
        edu = {"type": "m.presence", "sender": user_id, "content": content}
        self.add_ephemeral(edu, sorted({user_id, *sharing}))

    async def _send(self, service: AppService, pending: QueuedTransaction) -> Attempt:
        body = orjson.loads(pending.body)
        if not await self._client.push_transaction(service, pending.txn_id, body):
            return Attempt.RETRY
        await self._store.delivered(service.id, pending.txn_id)
        for callback in self.on_delivered:
            result = callback(service.id, pending.txn_id)
            if result is not None:
                await result
        return Attempt.DELIVERED

    async def _build_next(self, service: AppService) -> bool:
        """Store the next transaction (or just move the positions past what the service
        does not care about); False when there was nothing new."""
        known = await self._store.get_position(service.id)
        position = known[0] if known is not None else self._current_position()
        upto = self._current_position()
        rows = (
            await self._store.stream_event_ids(position, upto, MAX_EVENTS_PER_TRANSACTION)
            if upto > position
            else []
        )
        ephemeral = self._ephemeral.get(service.id, [])[:MAX_EPHEMERAL_PER_TRANSACTION]
        new_position = rows[-1][1] if len(rows) == MAX_EVENTS_PER_TRANSACTION else upto
        new_position = max(new_position, position)
        events = []
        if rows:
            stored = await self._events.get_events_with_meta(eid for eid, _ in rows)
            interest = _Interest(self._memberships, self._aliases)
            now = self._clock_ms()
            for event_id, _ in rows:
                pair = stored.get(event_id)
                if pair is not None and await interest(service, pair.event):
                    events.append(client_event(pair, now))
        e2ee_body, extras, moved = await self._e2ee_part(service, events)
        if not events and not ephemeral and not e2ee_body:
            if new_position > position:
                await self._store.set_position(service.id, new_position)
            if moved:
                await self._store.set_stream_positions(service.id, extras.positions)
            return new_position > position or moved
        body: dict[str, Any] = {"events": events, **e2ee_body}
        if ephemeral:
            body["ephemeral"] = ephemeral
            body["de.sorunome.msc2409.ephemeral"] = ephemeral
        txn_id = await self._store.enqueue(
            service.id, orjson.dumps(body).decode(), new_position, extras
        )
        del self._ephemeral.get(service.id, [])[: len(ephemeral)]
        logger.debug(
            "application service %s: transaction %d (%d events, %d ephemeral)",
            service.id,
            txn_id,
            len(events),
            len(ephemeral),
        )
        return True

    async def _e2ee_part(
        self, service: AppService, events: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], Extras, bool]:
        """MSC2409 to-device messages (for ``receive_ephemeral``) and MSC3202 device
        lists, one-time-key counts and fallback key types (for ``org.matrix.msc3202``):
        the transaction's fields, the positions and inbox rows it moves, and whether any
        position moved."""
        e2ee = self._e2ee
        body: dict[str, Any] = {}
        positions: dict[str, int] = {}
        taken: list[tuple[str, str, int]] = []
        if e2ee is None or not (service.receive_ephemeral or service.msc3202):
            return body, Extras(), False
        moved = False
        users: set[str] = set()
        if service.receive_ephemeral:
            upto = e2ee.to_device_position()
            after = await self._store.stream_position(service.id, "to_device", upto)
            if upto > after:
                rows, reached = await self._store.to_device_between(
                    after, upto, MAX_TO_DEVICE_REQUESTS
                )
                messages = []
                for stream_id, user_id, device_id, message_json in rows:
                    # Its exclusive users' messages are the service's alone: they move
                    # from the inbox into the transaction (their devices never sync).
                    if not service.user_in_namespace(user_id, exclusive=True):
                        continue
                    message = orjson.loads(message_json)
                    message["to_user_id"] = user_id
                    message["to_device_id"] = device_id
                    messages.append(message)
                    taken.append((user_id, device_id, stream_id))
                    users.add(user_id)
                if messages:
                    body["de.sorunome.msc2409.to_device"] = messages
                positions["to_device"] = reached
                moved = True
        if service.msc3202:
            upto = e2ee.device_list_position()
            after = await self._store.stream_position(service.id, "device_lists", upto)
            if upto > after:
                changed_users, reached = await self._store.device_list_changes_between(
                    after, upto, MAX_DEVICE_LIST_POSITIONS
                )
                changed, left = await self._device_list(service, changed_users, after, reached)
                if changed or left:
                    body["org.matrix.msc3202.device_list"] = {
                        "changed": sorted(changed),
                        "left": sorted(left),
                    }
                positions["device_lists"] = reached
                moved = True
            for event in events:
                for user in (event.get("sender"), event.get("state_key")):
                    if isinstance(user, str) and service.user_in_namespace(user, exclusive=True):
                        users.add(user)
            if users:
                counts, fallback = await self._store.key_counts(sorted(users))
                if counts:
                    body["org.matrix.msc3202.device_one_time_keys_count"] = counts
                    # The name before MSC3202's rename, which bridges still read.
                    body["org.matrix.msc3202.device_one_time_key_counts"] = counts
                    body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback
        return body, Extras(positions, taken), moved

    async def _device_list(
        self, service: AppService, changed_users: set[str], after: int, upto: int
    ) -> tuple[set[str], set[str]]:
        """MSC3202's device list for (after, upto]: `changed` — users who changed devices
        or keys and whom the service's users can see (its own, or sharing a room with
        one), and users newly sharing a room with its users; `left` — users who shared a
        room with its users and share none any more."""
        transitions = await self._store.membership_transitions_between(
            after, upto, MAX_MEMBERSHIP_TRANSITIONS
        )
        rooms = {room for room, _, _ in transitions}
        members = await self._memberships.get_joined_users_for_rooms(rooms)
        newly: set[str] = set()
        maybe_left: set[str] = set()
        for room, user, joined in transitions:
            room_members = members.get(room, frozenset())
            if service.owns_user(user):
                # Its user joined or left: the room's members are new to it, or may be gone.
                (newly if joined else maybe_left).update(room_members)
            elif joined and any(service.owns_user(m) for m in room_members):
                newly.add(user)
            elif not joined:
                maybe_left.add(user)
        candidates = {u for u in changed_users | newly | maybe_left if not service.owns_user(u)}
        sharing = await self._sharing(service, candidates)
        changed = {u for u in changed_users if service.owns_user(u)}
        changed |= (changed_users | newly) & sharing
        left = {u for u in maybe_left if not service.owns_user(u)} - sharing
        return changed, left

    async def _sharing(self, service: AppService, users: set[str]) -> set[str]:
        """Of `users`, those sharing a room with one of the service's users now."""
        if not users:
            return set()
        rooms_of = await self._store.joined_rooms_of(sorted(users))
        members = await self._memberships.get_joined_users_for_rooms(
            {r for rooms in rooms_of.values() for r in rooms}
        )
        return {
            user
            for user, rooms in rooms_of.items()
            if any(service.owns_user(m) for r in rooms for m in members.get(r, ()))
        }
