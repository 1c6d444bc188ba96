"""Push delivery: HTTP pushers get POST {data.url} (spec: push-gateway-api,
/_matrix/push/v1/notify) for each event their user's push rules say `notify` for.

Where the notifications come from: the push evaluator (starling/push/evaluator.py) stores
them in event_push_actions as it reads the events stream, then tells this sender which
users got new ones. Each HTTP pusher has its own stored position
(pushers.last_stream_ordering, as in Synapse) and one task delivering its user's
notifications after that position, in order, one request at a time, moving the position
past each notification once it is sent (or given up on). So a slow or failing gateway
delays only its own pushers, a new pusher starts at the stream's position when it was set,
and a restart loses nothing: at start every pusher with notifications after its position
resumes (events persisted while the server was down are evaluated at start, so they are
pushed too). A notification sent just before a crash, whose position was not yet stored,
is sent again (at least once; a gateway sees the same event ID).

A failed request (connection error, timeout, non-2xx) is retried with exponential backoff
(the shared BackoffPolicy), at most MAX_ATTEMPTS times; then that notification is given up on. A pushkey the gateway
lists in `rejected` removes the pusher (spec: the homeserver "MUST" remove it). Badge
updates after a read receipt are not stored: they are sent at once (a newer one follows
the next receipt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

import aiohttp

from starling.address_guard import AddressPolicy, guarded_socket_factory, is_blocked_error
from starling.protocol.event import Event
from starling.storage.events import EventStore, StoredEvent
from starling.storage.push_actions import PushAction, PushActionStore
from starling.storage.pushers import PusherStore

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 20.0
BACKLOG_BATCH = 50  # notifications read per query of a pusher's backlog
# Keys of a pusher's data that are ours, not the gateway's (spec: "data" of a device).
_PRIVATE_DATA_KEYS = ("url", "format")

BadgeCount = Callable[[str], Awaitable[int]]  # user_id -> unread notifications, all rooms
PusherKey = tuple[str, str, str]  # user_id, app_id, pushkey


def tweaks_of(actions: list[Any] | None) -> dict[str, Any]:
    """The set_tweak actions as {tweak: value} (highlight without a value is true)."""
    out: dict[str, Any] = {}
    for action in actions or ():
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            out[action["set_tweak"]] = action.get("value", True)
    return out


# What a notification says about the room and sender besides the event (push gateway
# API: room_name, room_alias, sender_display_name), read once per event.
RoomDetails = Callable[[Event], Awaitable[dict[str, Any]]]


async def _no_details(event: Event) -> dict[str, Any]:
    return {}


def room_details_from(
    current_state: Callable[[str], Awaitable[Mapping[tuple[str, str], str]]],
    get_events: Callable[[list[str]], Awaitable[Mapping[str, StoredEvent]]],
) -> RoomDetails:
    """Reads room_name, room_alias and sender_display_name from the room's current state.
    `get_events` maps event IDs to the stored events."""

    async def details(event: Event) -> dict[str, Any]:
        state = await current_state(event.room_id)
        wanted = {
            "room_name": (("m.room.name", ""), "name"),
            "room_alias": (("m.room.canonical_alias", ""), "alias"),
            "sender_display_name": (("m.room.member", event.sender), "displayname"),
        }
        contents: dict[tuple[str, str], Any] = {}
        if state:
            ids = [state[key] for key, _ in wanted.values() if key in state]
            found = await get_events(ids) if ids else {}
            for key, _ in wanted.values():
                pair = found.get(state.get(key, ""))
                if pair is not None:
                    contents[key] = pair.event.content
        else:
            # A room this server is not in (an invite from another server): what the
            # inviting server told of it, the invite's stripped state (as Synapse).
            stripped = event.unsigned.get("invite_room_state")
            for entry in stripped if isinstance(stripped, list) else ():
                if (
                    isinstance(entry, dict)
                    and isinstance(entry.get("type"), str)
                    and isinstance(entry.get("state_key"), str)
                    and isinstance(entry.get("content"), dict)
                ):
                    contents[(entry["type"], entry["state_key"])] = entry["content"]
        out: dict[str, Any] = {}
        for name, (key, field) in wanted.items():
            value = contents.get(key, {}).get(field)
            if isinstance(value, str) and value:
                out[name] = value
        # Like Synapse: a room without a name is named by its canonical alias.
        if "room_name" not in out and "room_alias" in out:
            out["room_name"] = out["room_alias"]
        return out

    return details


def notification_body(
    event: Event,
    pusher: dict[str, Any],
    actions: list[Any] | None,
    unread: int,
    *,
    user_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The request body of /_matrix/push/v1/notify for one pusher of `user_id`."""
    data = pusher.get("data") or {}
    tweaks = tweaks_of(actions)
    device = {
        "app_id": pusher["app_id"],
        "pushkey": pusher["pushkey"],
        "pushkey_ts": int(pusher.get("pushkey_ts", 0)),
        "data": {k: v for k, v in data.items() if k not in _PRIVATE_DATA_KEYS},
        "tweaks": tweaks,
    }
    notification: dict[str, Any] = {
        "event_id": event.event_id,
        "room_id": event.room_id,
        "counts": {"unread": unread},
        "devices": [device],
        "prio": "high" if tweaks.get("highlight") or tweaks.get("sound") else "low",
    }
    if data.get("format") != "event_id_only":
        # "id" is the event ID again, under the name Synapse (and older gateways) use.
        notification["id"] = event.event_id
        notification["type"] = event.type
        notification["sender"] = event.sender
        notification["content"] = event.content
        notification.update(details or {})
        if event.type == "m.room.member" and event.state_key is not None:
            notification["membership"] = event.content.get("membership")
            notification["user_is_target"] = event.state_key == user_id
    return {"notification": notification}


def badge_body(pusher: dict[str, Any], unread: int) -> dict[str, Any]:
    """A badge-only notification: the user's unread count for their devices."""
    data = pusher.get("data") or {}
    device = {
        "app_id": pusher["app_id"],
        "pushkey": pusher["pushkey"],
        "pushkey_ts": int(pusher.get("pushkey_ts", 0)),
        "data": {k: v for k, v in data.items() if k not in _PRIVATE_DATA_KEYS},
    }
    return {"notification": {"counts": {"unread": unread}, "devices": [device], "prio": "low"}}


class RetryPolicy(Protocol):
    """What starling.federation.sender.backoff.BackoffPolicy offers."""

    def next_interval(self, previous_ms: int, failing_since_ms: int, now_ms: int) -> int: ...

    def jittered(self, interval_ms: int) -> int: ...


class _DoublingPolicy:
    """Without a policy given (unit use): doubling from `initial_ms` up to the cap."""

    def __init__(self, initial_ms: int) -> None:
        self._initial_ms = initial_ms

    def next_interval(self, previous_ms: int, failing_since_ms: int, now_ms: int) -> int:
        nxt = self._initial_ms if previous_ms <= 0 else previous_ms * 2
        return min(nxt, int(MAX_BACKOFF_SECONDS * 1000))

    def jittered(self, interval_ms: int) -> int:
        return interval_ms


class PushSender:
    """Background delivery of stored notifications to HTTP push gateways."""

    def __init__(
        self,
        pushers: PusherStore,
        actions: PushActionStore,
        events: EventStore,
        unread: BadgeCount,
        *,
        address_policy: AddressPolicy | None = None,
        verify_certificates: bool = True,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        room_details: RoomDetails = _no_details,
        backoff: Callable[[int], RetryPolicy] | None = None,
    ) -> None:
        self._backoff = backoff or _DoublingPolicy
        self._pushers = pushers
        self._actions = actions
        self._events = events
        self._room_details = room_details
        # Pusher URLs come from users: without this, any user could make the server
        # POST into its own network (ip_range_blacklist, as Synapse applies it to push).
        self._address_policy = address_policy
        self._verify_certificates = verify_certificates
        self._unread = unread
        self.first_backoff = first_backoff
        self._running = False
        self._tasks: dict[PusherKey, asyncio.Task[None]] = {}
        # Pushers told of new notifications while their task was reading: read again.
        self._dirty: set[PusherKey] = set()
        self._session: aiohttp.ClientSession | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        # Set with workers on the processes that do not push: badge updates go over the
        # cluster bus to the one that does (starling/cluster).
        self.forward: Callable[[str], None] | None = None

    def notified(self, user_ids: set[str]) -> None:
        """The evaluator stored new notifications for these users: wake their pushers."""
        if self._running:
            self._side_task(self._wake_users(user_ids))

    def badge_changed(self, user_id: str) -> None:
        """The user read something (a read receipt): their gateways get the new unread
        count alone, so a phone's badge follows (a notification with only `counts` and
        `devices`, as the push gateway API allows and Synapse sends)."""
        if self.forward is not None:
            self.forward(user_id)
            return
        if self._running:
            self._side_task(self._send_badge(user_id))

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _wake_users(self, user_ids: set[str]) -> None:
        try:
            targets = await self._pushers.list_http_for_users(user_ids)
            for user_id, pushers in targets.items():
                for pusher in pushers:
                    self._wake((user_id, pusher["app_id"], pusher["pushkey"]))
        except Exception:
            logger.exception("waking pushers failed")

    def _wake(self, key: PusherKey) -> None:
        self._dirty.add(key)
        if key not in self._tasks and self._running:
            self._tasks[key] = asyncio.create_task(self._deliver_backlog(key))

    async def _send_badge(self, user_id: str) -> None:
        try:
            targets = await self._pushers.list_http_for_users({user_id})
            if not targets.get(user_id):
                return
            unread = await self._unread(user_id)
            for pusher in targets[user_id]:
                key = (user_id, pusher["app_id"], pusher["pushkey"])
                body = badge_body(pusher, unread)
                if await self._deliver(key, pusher["data"]["url"], body) == "rejected":
                    await self._pushers.delete(*key)
        except Exception:
            logger.exception("badge update failed for %s", user_id)

    async def start(self) -> None:
        if self._running:
            return
        factory = (
            guarded_socket_factory(self._address_policy, "ip_range_blacklist")
            if self._address_policy is not None
            else None
        )
        connector = aiohttp.TCPConnector(socket_factory=factory, ssl=self._verify_certificates)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            trust_env=False,
        )
        self._running = True
        # Catch-up: every pusher with notifications it has not delivered yet (left by the
        # last run, or evaluated since from events persisted while it was down).
        for pending in await self._actions.pushers_with_backlog():
            self._wake((pending.user_id, pending.app_id, pending.pushkey))

    async def stop(self) -> None:
        self._running = False
        tasks = [*self._tasks.values(), *self._side_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._dirty.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver_backlog(self, key: PusherKey) -> None:
        """Deliver the pusher's notifications after its stored position, in order."""
        user_id, app_id, pushkey = key
        try:
            while True:
                self._dirty.discard(key)
                position = await self._actions.pusher_position(user_id, app_id, pushkey)
                pusher = next(
                    (
                        p
                        for p in (await self._pushers.list_http_for_users({user_id})).get(
                            user_id, []
                        )
                        if p["app_id"] == app_id and p["pushkey"] == pushkey
                    ),
                    None,
                )
                if position is None or pusher is None:
                    return  # deleted, or no longer an HTTP pusher
                backlog = await self._actions.after(user_id, position, BACKLOG_BATCH)
                if not backlog:
                    if key in self._dirty:
                        continue  # woken while reading: look again
                    return
                if not await self._deliver_batch(key, pusher, backlog):
                    await self._pushers.delete(user_id, app_id, pushkey)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("push delivery failed for %s", key)
        finally:
            self._tasks.pop(key, None)

    async def _deliver_batch(
        self, key: PusherKey, pusher: dict[str, Any], backlog: list[PushAction]
    ) -> bool:
        """Send each notification and store the position past it; False: pushkey rejected."""
        user_id, app_id, pushkey = key
        loaded = await self._events.get_events_with_meta(a.event_id for a in backlog)
        for action in backlog:
            pair = loaded.get(action.event_id)
            if pair is not None:
                event = pair.event
                unread = await self._unread(user_id)
                details = await self._room_details(event)
                body = notification_body(
                    event, pusher, action.actions, unread, user_id=user_id, details=details
                )
                if await self._deliver(key, pusher["data"]["url"], body) == "rejected":
                    return False
            await self._actions.set_pusher_position(
                user_id, app_id, pushkey, action.stream_ordering
            )
        return True

    async def _deliver(self, key: PusherKey, url: str, body: dict[str, Any]) -> str:
        """POST one notification, retrying: "sent", "rejected" or "failed"."""
        assert self._session is not None
        # The shared retry policy (federation/sender/backoff.py BackoffPolicy, given by
        # the composition root: importing it here would make a package cycle), started at
        # first_backoff.
        policy = self._backoff(max(1, int(self.first_backoff * 1000)))
        failing_since = int(time.monotonic() * 1000)
        wait_ms = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._session.post(url, json=body) as resp:
                    if 200 <= resp.status < 300:
                        answer = await resp.json(content_type=None)
                        rejected = answer.get("rejected") if isinstance(answer, dict) else None
                        if isinstance(rejected, list) and key[2] in rejected:
                            return "rejected"
                        return "sent"
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                if is_blocked_error(e):
                    # Refused by ip_range_blacklist: no retry will be allowed either.
                    logger.warning("push to %s refused by ip_range_blacklist (%s); dropped", url, e)
                    return "failed"
                reason = repr(e)
            if attempt < MAX_ATTEMPTS:
                wait_ms = policy.next_interval(wait_ms, failing_since, int(time.monotonic() * 1000))
                delay = policy.jittered(wait_ms) / 1000
                logger.info("push to %s failed (%s); retry in %.1fs", url, reason, delay)
                await asyncio.sleep(delay)
        logger.warning("push to %s failed %d times; notification dropped", url, MAX_ATTEMPTS)
        return "failed"
