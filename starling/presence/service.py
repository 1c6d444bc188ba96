"""Presence (spec: client-server-api modules/presence.md).

Current presence of local users lives in memory. A change others should see (state,
status message, or currently_active flipping) is announced: written to the database
with the next "presence" stream position, and the users sharing a room woken. Activity
that changes nothing visible (last_active_ts moving while already active) stays in
memory and is flushed in batches, without a stream position.

Like Synapse: a user is currently_active for a minute after activity; an online user
idle for five minutes becomes unavailable; a user who set presence by syncing or PUT
and has not synced for 30 seconds (and has no /sync long-poll waiting) goes offline. One
background loop, running only while someone is not offline, applies these timeouts.

With workers (docs/scaling.md) every process keeps every user's presence: each
visible change is written with its stream position and relayed over the bus, and a
process takes a relayed or stored state only when its position is newer than the one it
holds, so all of them end on the latest write. The timeouts run on one process (the one
running background tasks, `runs_timeouts`); the others tell it, every few seconds, who is
syncing through them and who was active (`heartbeat`), so a user whose long-polls land
on another process does not time out, and one whose process died does.

Users see the presence of users they share a room with, and their own. With
`presence.enabled: false`, PUT is accepted and ignored, GET answers offline, and /sync
carries no presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from starling.errors import forbidden, invalid_param
from starling.notifier import Notifier
from starling.storage.memberships import MembershipStore
from starling.storage.presence import PresenceRow, PresenceStore
from starling.sync.extension import SyncContext
from starling.sync.sections import add_global_events, section_matcher

logger = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline")
MAX_STATUS_MSG_LENGTH = 1024
# currently_active lasts this long after the last activity.
ACTIVE_WINDOW_MS = 60_000
# Online users with no activity for this long become unavailable.
IDLE_TIMEOUT_MS = 5 * 60_000
# Users not syncing for this long go offline.
SYNC_TIMEOUT_MS = 30_000
# Offline users active within this long are still shown to a server that has just come to
# share a room with them.
SHARE_ACTIVE_WITHIN_MS = 7 * 24 * 3600 * 1000
# How often the timeouts are checked and last-active times flushed.
CHECK_INTERVAL_S = 5.0
FLUSH_INTERVAL_MS = 60_000
# With workers: how often a process that does not run the timeouts tells the one that
# does who is syncing through it and who was active (well within SYNC_TIMEOUT_MS).
HEARTBEAT_S = 5.0


@dataclass(slots=True)
class _Presence:
    state: str
    status_msg: str | None
    last_active_ts: int
    currently_active: bool
    last_sync_ts: int = 0


class PresenceService:
    """Presence state and the presence SyncExtension (stream "presence")."""

    stream_name = "presence"

    def __init__(
        self,
        store: PresenceStore,
        memberships: MembershipStore,
        notifier: Notifier,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._memberships = memberships
        self._notifier = notifier
        self.enabled = enabled
        self._clock = clock
        self._states: dict[str, _Presence] = {}
        self._not_offline: set[str] = set()
        self._syncing: dict[str, int] = {}
        self._unflushed: dict[str, int] = {}  # user -> last_active_ts not yet written
        # The stream position of each held state (with workers, the newest write wins).
        self._positions: dict[str, int] = {}
        # Users whose activity or end of sync the timeouts' process has not heard of.
        self._touched: set[str] = set()
        self._last_flush = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        # Set by app.py for federation: which users are this server's (only they time
        # out here; other servers time out their own), and who hears of local changes.
        self.is_local: Callable[[str], bool] = lambda user_id: True
        self.on_local_changes: Callable[[dict[str, dict[str, Any]]], Awaitable[None]] | None = None
        # With workers (cluster/wiring.py): whether this process applies the timeouts,
        # and how it tells the others of announced states and heartbeats.
        self.runs_timeouts = True
        self.relay: Callable[[list[PresenceRow]], None] | None = None
        self.relay_heartbeat: Callable[[list[tuple[str, int, int]]], None] | None = None

    @classmethod
    async def create(
        cls,
        store: PresenceStore,
        memberships: MembershipStore,
        notifier: Notifier,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> PresenceService:
        """Load the users who were not offline (their timeouts then apply as usual)."""
        service = cls(store, memberships, notifier, enabled=enabled, clock=clock)
        now = service._now()
        service._hold_not_offline(await store.get_not_offline(), now)
        return service

    def _hold_not_offline(self, rows: Iterable[PresenceRow], now: int) -> None:
        for row in rows:
            self._states[row.user_id] = _Presence(
                row.state, row.status_msg, row.last_active_ts, row.currently_active, now
            )
            self._positions[row.user_id] = row.stream_id
            self._not_offline.add(row.user_id)

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def current_position(self) -> int:
        return self._store.stream.current_position()

    async def _load(self, user_id: str) -> _Presence:
        state = self._states.get(user_id)
        if state is None:
            rows = await self._store.get([user_id])
            row = rows.get(user_id)
            state = (
                _Presence("offline", None, 0, False)
                if row is None
                else _Presence(row.state, row.status_msg, row.last_active_ts, False)
            )
            if user_id not in self._states:
                self._states[user_id] = state
                if row is not None:
                    self._positions[user_id] = row.stream_id
            state = self._states[user_id]
        return state

    # --- changes ---------------------------------------------------------------------

    async def set_state(
        self, user_id: str, presence: str, status_msg: str | None = None, *, keep_msg: bool = False
    ) -> None:
        """PUT /presence/{userId}/status: set the state (and status message)."""
        if presence not in STATES:
            raise invalid_param(f"'presence' must be one of {', '.join(STATES)}")
        if status_msg is not None and len(status_msg) > MAX_STATUS_MSG_LENGTH:
            raise invalid_param(f"'status_msg' must be at most {MAX_STATUS_MSG_LENGTH} characters")
        if not self.enabled:
            return
        now = self._now()
        old = await self._load(user_id)
        new = replace(old, state=presence, last_sync_ts=now)
        if not keep_msg:
            new.status_msg = status_msg
        if presence == "online":
            new.last_active_ts = now
            new.currently_active = True
        await self._apply({user_id: new})

    async def set_presence_from_sync(self, user_id: str, set_presence: str | None) -> None:
        """Called by /sync with its `set_presence` parameter (None means online).

        "offline" leaves the state alone; otherwise a user who was offline becomes
        `set_presence`, and the sync keeps them from timing out."""
        if not self.enabled:
            return
        now = self._now()
        old = await self._load(user_id)
        old.last_sync_ts = now
        if set_presence == "offline":
            return
        wanted = set_presence or "online"
        if wanted not in STATES:
            raise invalid_param(f"'set_presence' must be one of {', '.join(STATES)}")
        if old.state == "offline":
            new = replace(old, state=wanted)
            if wanted == "online":
                new.last_active_ts = now
                new.currently_active = True
            await self._apply({user_id: new})

    @contextlib.asynccontextmanager
    async def user_syncing(self, user_id: str, set_presence: str | None) -> AsyncIterator[None]:
        """Wrap a /sync request: sets presence like `set_presence_from_sync` and keeps the
        user from timing out to offline while the request (a long-poll) runs."""
        await self.set_presence_from_sync(user_id, set_presence)
        self._syncing[user_id] = self._syncing.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._syncing.get(user_id, 1) - 1
            if left:
                self._syncing[user_id] = left
            else:
                self._syncing.pop(user_id, None)
                state = self._states.get(user_id)
                if state is not None:
                    state.last_sync_ts = self._now()
                    if not self.runs_timeouts:
                        self._touched.add(user_id)

    def bump_active(self, user_id: str) -> None:
        """The user did something (sent an event...): refresh last_active_ts in memory;
        announces only if that makes them currently_active or brings them back online."""
        if not self.enabled:
            return
        state = self._states.get(user_id)
        if state is None or state.state == "offline":
            return
        now = self._now()
        state.last_active_ts = now
        if state.currently_active and state.state == "online":
            self._unflushed[user_id] = now
            if not self.runs_timeouts:
                self._touched.add(user_id)
            return
        new = replace(state, state="online", currently_active=True)
        self._spawn(self._apply({user_id: new}))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(_log_failure)

    async def _apply(self, changes: dict[str, _Presence]) -> None:
        """Announce the visible changes (persist with stream positions, wake watchers);
        keep the others in memory only."""
        visible: dict[str, _Presence] = {}
        for user_id, new in changes.items():
            old = self._states.get(user_id)
            if old is None or _visible_change(old, new):
                visible[user_id] = new
            else:
                self._states[user_id] = new
                if new.last_active_ts != old.last_active_ts:
                    self._unflushed[user_id] = new.last_active_ts
        if not visible:
            return
        rows = [
            PresenceRow(u, s.state, s.status_msg, s.last_active_ts, s.currently_active)
            for u, s in visible.items()
        ]
        async with self._write_lock:
            await self._store.announce(rows)
            for row in rows:
                self._positions[row.user_id] = row.stream_id
            if self.relay is not None:
                self.relay(rows)
        rooms: set[str] = set()
        for user_id, state in visible.items():
            self._states[user_id] = state
            self._unflushed.pop(user_id, None)
            if state.state == "offline" or not self.is_local(user_id):
                self._not_offline.discard(user_id)
            else:
                self._not_offline.add(user_id)
            rooms.update(await self._memberships.get_joined_rooms(user_id))
        self._notifier.notify(users=list(visible), rooms=rooms)
        self._ensure_loop()
        local = {u: s for u, s in visible.items() if self.is_local(u)}
        if local and self.on_local_changes is not None:
            now = self._now()
            await self.on_local_changes({u: self._format(u, s, now) for u, s in local.items()})

    async def remote_update(
        self,
        user_id: str,
        presence: str,
        status_msg: str | None,
        last_active_ago: int,
        currently_active: bool,
    ) -> None:
        """Another server's user's presence (from an m.presence EDU)."""
        if not self.enabled or presence not in STATES:
            return
        new = _Presence(
            presence, status_msg, max(0, self._now() - last_active_ago), currently_active
        )
        held = self._states.get(user_id)
        if held is not None and held.last_active_ts == 0 and held.state == "offline":
            # Only the default we assumed (nothing was ever heard of them): the first
            # word from their server is news even when it says offline.
            del self._states[user_id]
        await self._apply({user_id: new})

    # --- with workers ------------------------------------------------------------------

    def changed_elsewhere(self, rows: Iterable[PresenceRow]) -> None:
        """States another process announced (relayed): taken when newer than held."""
        now = self._now()
        for row in rows:
            if row.stream_id <= self._positions.get(row.user_id, 0):
                continue
            self._adopt(row, now)
        self._ensure_loop()

    def _adopt(self, row: PresenceRow, now: int) -> None:
        """Hold `row`, a state written by another process after the one held here. It
        was set just now there (by a sync, a PUT or activity): the sync timeout starts
        again here too."""
        held = self._states.get(row.user_id)
        self._states[row.user_id] = _Presence(
            row.state,
            row.status_msg,
            max(row.last_active_ts, held.last_active_ts if held is not None else 0),
            row.currently_active,
            now,
        )
        self._positions[row.user_id] = row.stream_id
        if row.state == "offline" or not self.is_local(row.user_id):
            self._not_offline.discard(row.user_id)
        else:
            self._not_offline.add(row.user_id)

    def heartbeat(self) -> None:
        """On a process that does not run the timeouts: tell the one that does which
        users are syncing here (a long-poll waiting now) and who was active or stopped
        syncing since the last heartbeat."""
        if self.relay_heartbeat is None:
            return
        now = self._now()
        beats: list[tuple[str, int, int]] = []
        touched, self._touched = self._touched, set()
        for user_id in self._not_offline | touched:
            state = self._states.get(user_id)
            if state is None:
                continue
            if user_id in self._syncing or self._notifier.is_waiting(user_id):
                beats.append((user_id, state.last_active_ts, now))
            elif user_id in touched:
                beats.append((user_id, state.last_active_ts, state.last_sync_ts))
        if beats:
            self.relay_heartbeat(beats)

    def heartbeat_elsewhere(self, beats: Iterable[tuple[str, int, int]]) -> None:
        """Another process's heartbeat: its users' activity and syncs count here."""
        for user_id, last_active_ts, last_sync_ts in beats:
            state = self._states.get(user_id)
            if state is None:
                continue
            state.last_active_ts = max(state.last_active_ts, int(last_active_ts))
            state.last_sync_ts = max(state.last_sync_ts, int(last_sync_ts))

    async def heartbeat_loop(self) -> None:
        """Heartbeats (and this process's last-active flushes) while the server runs."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                self.heartbeat()
                if self._unflushed and self._now() - self._last_flush >= FLUSH_INTERVAL_MS:
                    await self.flush()
            except Exception:
                logger.exception("presence heartbeat failed")

    async def reload(self) -> None:
        """After news from other processes may have been lost: hold the stored states of
        everyone not offline, and forget the others' (read again when needed)."""
        rows = await self._store.get_not_offline()
        now = self._now()
        local = {u for u in self._states if self.is_local(u)}
        for user_id in local:
            del self._states[user_id]
            self._positions.pop(user_id, None)
        self._not_offline.clear()
        self._hold_not_offline(rows, now)
        self._ensure_loop()

    def _ensure_loop(self) -> None:
        if not self.runs_timeouts:
            return
        if self._not_offline and (self._loop_task is None or self._loop_task.done()):
            self._loop_task = asyncio.get_running_loop().create_task(self._timeout_loop())

    async def _timeout_loop(self) -> None:
        while self._not_offline:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                await self.check_timeouts()
            except Exception:
                logger.exception("presence timeout check failed")

    async def check_timeouts(self) -> None:
        """Apply idle / sync timeouts and currently_active expiry; flush last-active."""
        now = self._now()
        changes: dict[str, _Presence] = {}
        for user_id in list(self._not_offline):
            state = self._states.get(user_id)
            if state is None:
                continue
            new = state
            syncing = user_id in self._syncing or self._notifier.is_waiting(user_id)
            if not syncing and now - state.last_sync_ts > SYNC_TIMEOUT_MS:
                new = replace(state, state="offline", currently_active=False)
            else:
                if state.currently_active and now - state.last_active_ts > ACTIVE_WINDOW_MS:
                    new = replace(new, currently_active=False)
                if new.state == "online" and now - state.last_active_ts > IDLE_TIMEOUT_MS:
                    new = replace(new, state="unavailable")
            if new is not state:
                changes[user_id] = new
        if changes:
            await self._apply(changes)
        if self._unflushed and now - self._last_flush >= FLUSH_INTERVAL_MS:
            await self.flush()

    async def flush(self) -> None:
        """Write the pending last-active times (no stream positions)."""
        pending, self._unflushed = self._unflushed, {}
        self._last_flush = self._now()
        async with self._write_lock:
            await self._store.save_last_active(sorted(pending.items()))

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.flush()

    # --- reads -----------------------------------------------------------------------

    def _format(self, user_id: str, state: _Presence, now: int) -> dict[str, Any]:
        out: dict[str, Any] = {"presence": state.state}
        if state.last_active_ts:
            out["last_active_ago"] = max(0, now - state.last_active_ts)
        if state.status_msg is not None:
            out["status_msg"] = state.status_msg
        if state.state != "offline":
            out["currently_active"] = state.currently_active
        return out

    async def presence_to_share(self, user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The formatted presence of `user_ids` that a server which has just come to share
        a room with them is told: all but the default offline of users not active for a
        week (as Synapse)."""
        now = self._now()
        out: dict[str, dict[str, Any]] = {}
        for user_id in user_ids:
            state = await self._load(user_id)
            recent = state.last_active_ts and now - state.last_active_ts < SHARE_ACTIVE_WITHIN_MS
            if state.state != "offline" or recent or state.status_msg is not None:
                out[user_id] = self._format(user_id, state, now)
        return out

    async def get_presence(self, observer: str, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status, as `observer` (403 unless they share a room)."""
        if not self.enabled:
            return {"presence": "offline"}
        if observer != user_id and user_id not in await self._memberships.users_sharing_a_room(
            observer
        ):
            raise forbidden("You are not allowed to see their presence")
        return self._format(user_id, await self._load(user_id), self._now())

    # --- SyncExtension ---------------------------------------------------------------

    async def presence_events(
        self, users: set[str], since: int | None, upto: int, *, include_offline: bool = False
    ) -> list[dict[str, Any]]:
        """m.presence events of these users changed in (since, upto]; with since None,
        of those who are not offline (of all of them with `include_offline`)."""
        if not self.enabled:
            return []
        now = self._now()
        if since is None and include_offline:
            # One read for all those not in memory (a newly joined room's members can be
            # thousands); read, not kept: most of them are offline.
            missing = sorted(u for u in users if u not in self._states)
            stored = await self._store.get(missing)
            return [
                {
                    "type": "m.presence",
                    "sender": user_id,
                    "content": self._format(
                        user_id, self._states.get(user_id) or _from_row(stored.get(user_id)), now
                    ),
                }
                for user_id in sorted(users)
            ]
        elif since is None:
            # Ours who are not offline (the timeouts keep that set true), and other
            # servers' users whose last word was not offline (their servers time them
            # out and tell us), read from the store when not in memory.
            remote = sorted(u for u in users if not self.is_local(u) and u not in self._states)
            for user_id, row in (await self._store.get(remote)).items():
                self._states.setdefault(
                    user_id,
                    _Presence(row.state, row.status_msg, row.last_active_ts, row.currently_active),
                )
            wanted = sorted(
                u
                for u in users
                if u in self._not_offline
                or (
                    not self.is_local(u)
                    and u in self._states
                    and self._states[u].state != "offline"
                )
            )
        else:
            rows = await self._store.changed_between(since, upto, sorted(users))
            for row in rows:
                if row.user_id not in self._states:
                    self._states[row.user_id] = _Presence(
                        row.state, row.status_msg, row.last_active_ts, row.currently_active
                    )
                    self._positions[row.user_id] = row.stream_id
                elif row.stream_id > self._positions.get(row.user_id, 0):
                    # Written by another process, whose relay has not arrived yet.
                    self._adopt(row, now)
            wanted = sorted(row.user_id for row in rows)
        return [
            {
                "type": "m.presence",
                "sender": user_id,
                "content": self._format(user_id, self._states[user_id], now),
            }
            for user_id in wanted
            if user_id in self._states
        ]

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        """m.presence events of the requester and the users sharing a room with them,
        changed in (since, upto] (on an initial sync: those who are not offline); and
        on an incremental sync the current presence of the users who newly came into
        view (ctx.newly_joined_users), changed or not, as Synapse sends it, since the
        client was never told it."""
        if not self.enabled:
            return False
        await self.set_presence_from_sync(ctx.user_id, ctx.set_presence)
        allowed = section_matcher(ctx, "presence")
        users = await self._memberships.users_sharing_a_room(ctx.user_id)
        users.add(ctx.user_id)
        found = await self.presence_events(users, ctx.since, ctx.upto)
        if ctx.since is not None and ctx.newly_joined_users:
            changed = {event["sender"] for event in found}
            found += await self.presence_events(
                set(ctx.newly_joined_users) - changed, None, ctx.upto, include_offline=True
            )
        events = [event for event in found if allowed(event, None)]
        add_global_events(response, "presence", events)
        return bool(events)


def _from_row(row: PresenceRow | None) -> _Presence:
    """A stored presence (none stored: offline), as `_load` reads it."""
    if row is None:
        return _Presence("offline", None, 0, False)
    return _Presence(row.state, row.status_msg, row.last_active_ts, False)


def _visible_change(old: _Presence, new: _Presence) -> bool:
    return (
        old.state != new.state
        or old.status_msg != new.status_msg
        or old.currently_active != new.currently_active
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("presence update failed", exc_info=task.exception())
