"""Joining a process to the others of its server (docs/scaling.md): what each process tells
the others over the bus, and what it does with what they tell it.

Told (after commit, in the order it happened here):
- committed stream positions, every stream (storage/streams.py allocates them in commit
  order cluster-wide, so a position told is a position every reader may move to);
- what a write makes stale: an event whose metadata changed, a room written (its
  extremities, state tips, current state, members), memberships of users, the "which
  rooms / whose memberships changed" caches /sync reads, access tokens revoked;
- persisted timeline events and current-state changes, which the other processes replay
  to their own listeners (sync wake-ups, sliding-sync room lists, the senders where they
  run), except `writer_only` ones;
- notifier wake-ups, applied after the positions they follow;
- typing (each process keeps every room's typing users; the typing stream's positions
  are wall-clock based, so they agree closely enough between processes);
- presence: every announced state (each process keeps everyone's, the newest stream
  position winning), and heartbeats — who syncs through this process, who was active —
  to the process that runs the timeouts (the background tasks' one);
- rate limits: every process spends from the same buckets in Redis
  (starling/cluster/ratelimit.py); admins' per-user overrides are relayed;
- work for the singletons (federation EDUs, push badges, appservice ephemeral data) from
  processes that do not run them.

Every relay is silent while this process applies another's news (`ClusterBus.quiet`), so
nothing echoes. A process that lost the bus forgets every such cache and re-reads the
positions (`resync`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starling.accounts.auth import RequestAuthenticator
from starling.appservice.sender import AppServiceSender
from starling.cluster.bus import ClusterBus
from starling.cluster.roles import ClusterRoles
from starling.config import RateLimit
from starling.federation.sender.sender import FederationSender
from starling.media.service import MediaService
from starling.notifier import Notifier
from starling.presence.service import PresenceService
from starling.protocol.event import StateKey
from starling.push.delivery import PushSender
from starling.ratelimit import RateLimits, SharedBuckets
from starling.rooms.delayed import DelayedEvents
from starling.rooms.locks import RoomLocks
from starling.rooms.persister import EventPersister
from starling.storage.change_cache import StreamChangeCache
from starling.storage.database import Database
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.postgres import PostgresDatabase
from starling.storage.presence import PresenceRow
from starling.storage.state import StateStore
from starling.storage.streams import StreamIdGenerator, generators_of
from starling.typing.service import TypingService

logger = logging.getLogger(__name__)

# How long later commits may wait for the news of an earlier one before a resync.
STALL_SECONDS = 3.0
# What a process that does not send may ask the federation sender to do.
_FEDERATION_METHODS = frozenset({"send_edu", "stored_edus_added", "destination_is_up"})


@dataclass
class ClusterParts:
    """The pieces of a built server that take part (app.py fills it)."""

    db: Database
    notifier: Notifier
    room_locks: RoomLocks
    persister: EventPersister
    event_store: EventStore
    state_store: StateStore
    membership_store: MembershipStore
    auth: RequestAuthenticator
    federation_sender: FederationSender
    push_sender: PushSender
    app_service_sender: AppServiceSender
    typing: TypingService
    delayed_events: DelayedEvents
    rate_limits: RateLimits
    shared_buckets: SharedBuckets | None
    reload_rate_limit_overrides: Callable[[], Awaitable[None]]
    presence: PresenceService
    media: MediaService


class _Quiet:
    """Set while another process's news is applied: relays say nothing then."""

    def __init__(self) -> None:
        self.on = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False


class _PersistRelay:
    def __init__(self, bus: ClusterBus, quiet: _Quiet) -> None:
        self._bus = bus
        self._quiet = quiet

    def room(self, room_id: str) -> None:
        if not self._quiet.on:
            self._bus.send("room", room_id)

    def event(self, event_id: str, position: int) -> None:
        if not self._quiet.on:
            self._bus.send("event", [event_id, position])

    def state(self, room_id: str, changed: Mapping[StateKey, str | None], position: int) -> None:
        if not self._quiet.on:
            self._bus.send(
                "state", [room_id, [[t, k, e] for (t, k), e in changed.items()], position]
            )


async def join_cluster(bus: ClusterBus, parts: ClusterParts, roles: ClusterRoles) -> None:
    """Wire `parts` to the bus (already started). Call before serving anything."""
    if not isinstance(parts.db, PostgresDatabase):
        raise RuntimeError("workers need PostgreSQL")
    db: PostgresDatabase = parts.db
    quiet = _Quiet()

    def send(kind: str, payload: Any) -> None:
        if not quiet.on:
            bus.send(kind, payload)

    # --- streams -------------------------------------------------------------------------
    # Every handler is registered before anything is read (no await until then), so no
    # news is missed from here on; what was committed before is read from PostgreSQL
    # below (`use_cluster` reads the positions under the streams' locks).
    generators: dict[str, list[StreamIdGenerator]] = {}
    for generator in generators_of(db):
        generators.setdefault(generator.name, []).append(generator)

    def advance(stream: str, previous: int, position: int) -> None:
        for generator in generators.get(stream, ()):
            if generator.clustered:
                generator.advance(previous, position)

    bus.on_position(advance)

    # --- caches --------------------------------------------------------------------------
    events, state, members = parts.event_store, parts.state_store, parts.membership_store
    change_caches: dict[str, StreamChangeCache[str]] = {
        "rooms": events.room_changes,
        "members": state.member_changes,
    }
    for name, cache in change_caches.items():
        cache.on_change = lambda key, position, name=name: send("scc", [name, key, position])

    def scc(payload: list[Any]) -> None:
        name, key, position = payload
        cache = change_caches.get(name)
        if cache is not None:
            cache.changed_here(key, int(position))

    def forget_room(room_id: str) -> None:
        events.drop_room_caches(room_id)
        state.forget_room(room_id)
        members.invalidate_here([room_id], [])

    events.on_invalidate = lambda event_id: send("ev_inv", event_id)
    events.on_forget = lambda room_id, ids: send("purged", [room_id, ids])

    def purged(payload: list[Any]) -> None:
        room_id, ids = payload
        if ids is None:
            events.forget_room_here(room_id)
        else:
            events.forget_events_here(room_id, ids)
        forget_room(room_id)

    bus.on("purged", purged)
    members.on_invalidate = lambda rooms, users: send("mem", [rooms, users])
    parts.auth.on_invalidate = lambda method, args: send("tok", [method, args])
    bus.on("ev_inv", events.invalidate_here)
    bus.on("mem", lambda p: members.invalidate_here(p[0], p[1]))
    bus.on("tok", lambda p: parts.auth.invalidate_here(p[0], p[1]))
    bus.on("scc", scc)
    bus.on("room", forget_room)

    # --- events and state, replayed to this process's listeners ------------------------
    parts.persister.relay = _PersistRelay(bus, quiet)

    async def replay_event(payload: list[Any]) -> None:
        event_id, position = payload[0], int(payload[1])
        stored = await events.get_event(event_id)
        if stored is None:
            logger.warning("cluster: event %s announced but not found", event_id)
            return
        with quiet():
            parts.persister.replay_event(stored.event, position)

    def replay_state(payload: list[Any]) -> None:
        room_id, changed, position = payload
        delta: dict[StateKey, str | None] = {(t, k): e for t, k, e in changed}
        with quiet():
            parts.persister.replay_state(room_id, delta, int(position))

    bus.on("event", replay_event)
    bus.on("state", replay_state)

    # --- the notifier: after the positions ---------------------------------------------
    parts.notifier.relay = lambda users, rooms: send("notify", [users, rooms])
    bus.on(
        "notify",
        lambda p: parts.notifier.notify_here(users=p[0], rooms=p[1]),
        after_positions=True,
    )

    # --- typing: every process keeps the room's typing users -------------------------
    parts.typing.relay = lambda room, user, typing, ms: send("typing", [room, user, typing, ms])

    def typing_changed(payload: list[Any]) -> None:
        room_id, user_id, typing, timeout_ms = payload
        with quiet():  # its notify wakes this process's syncs, and is not relayed
            if typing:
                parts.typing.started_here(room_id, user_id, int(timeout_ms))
            else:
                parts.typing.stopped_here(room_id, user_id)

    bus.on("typing", typing_changed)

    # --- presence: everyone's on every process; the timeouts on one ---------------------
    presence = parts.presence
    presence.runs_timeouts = roles.background_tasks
    presence.relay = lambda rows: send(
        "presence",
        [
            [r.user_id, r.state, r.status_msg, r.last_active_ts, r.currently_active, r.stream_id]
            for r in rows
        ],
    )
    bus.on(
        "presence",
        lambda p: presence.changed_elsewhere(
            PresenceRow(str(u), str(st), msg, int(active), bool(current), int(position))
            for u, st, msg, active, current, position in p
        ),
    )
    if roles.background_tasks:
        bus.on("presence_beat", presence.heartbeat_elsewhere)
    else:
        presence.relay_heartbeat = lambda beats: bus.send("presence_beat", beats)
        bus.add_task(presence.heartbeat_loop())

    # --- rate limits: one allowance whichever process a client reaches ----------------
    parts.rate_limits.buckets.shared = parts.shared_buckets

    def relay_override(user_id: str, limit: RateLimit | None) -> None:
        limits = None if limit is None else [limit.per_second, limit.burst_count]
        send("rl_override", [user_id, limits])

    def override(payload: list[Any]) -> None:
        user_id, limit = payload
        parts.rate_limits.set_message_override_here(
            user_id, None if limit is None else RateLimit(float(limit[0]), int(limit[1]))
        )

    parts.rate_limits.relay = relay_override
    bus.on("rl_override", override)

    # --- singletons ----------------------------------------------------------------------
    sender = parts.federation_sender
    if roles.federation_sender:

        def federation(payload: list[Any]) -> None:
            method, args = payload
            if method in _FEDERATION_METHODS:
                getattr(sender, method)(*args)

        bus.on("fed", federation)
    else:
        sender.forward = lambda method, args: bus.send("fed", [method, args])
    if roles.pusher:
        bus.on("push_badge", parts.push_sender.badge_changed)
    else:
        parts.push_sender.forward = lambda user_id: bus.send("push_badge", user_id)
    if roles.appservice_sender:
        bus.on("as_eph", lambda p: parts.app_service_sender.add_ephemeral(p[0], p[1]))
    else:
        parts.app_service_sender.forward = lambda edu, users: bus.send("as_eph", [edu, users])

    if roles.background_tasks:
        bus.on("delayed", lambda _: parts.delayed_events.wake_here())
    else:
        parts.delayed_events.relay = lambda: bus.send("delayed", None)

    # --- after a lost subscription ------------------------------------------------------
    async def resync() -> None:
        for generator in generators_of(db):
            await generator.reload(db)
        events.drop_all_caches()
        state.drop_current_state_cache()
        members.invalidate_all()
        parts.auth.invalidate_here("clear", [])
        await presence.reload()
        await parts.reload_rate_limit_overrides()
        position = parts.persister.current_position
        for cache in change_caches.values():
            cache.reset(position)
        parts.notifier.notify_all()

    bus.on_resync(resync)

    async def watch_chains() -> None:
        """A commit whose news never came (a message lost) leaves later ones waiting:
        after STALL_SECONDS, re-read positions and forget what the bus keeps fresh."""
        while True:
            await asyncio.sleep(1.0)
            if any(g.stalled_for() > STALL_SECONDS for g in generators_of(db) if g.clustered):
                logger.warning("cluster: a stream's commits are missing news; resyncing")
                await resync()

    bus.add_task(watch_chains())

    # --- now read what was committed before this process listened -----------------------
    await parts.room_locks.use_cluster(db.session_locks, forget_room)
    await parts.media.use_cluster(db.session_locks)
    for generator in generators_of(db):
        await generator.use_cluster(db, bus.position)
    # Changes committed before the handlers were registered are at or below the
    # positions just read: the change caches know only what comes after them, and
    # nothing cached while the server was being built is kept.
    position = parts.persister.current_position
    for cache in change_caches.values():
        cache.known_from(position)
    events.drop_all_caches()
    state.drop_current_state_cache()
    members.invalidate_all()
