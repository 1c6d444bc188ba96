"""Push delivery: HTTP pushers get POST {data.url} (spec: push-gateway-api,
/_matrix/push/v1/notify) for each new event their user's push rules say `notify` for.

Where the events come from: the RoomEventService new-event listener (after commit, on the
loop). The listener only appends the event to an in-memory queue and wakes the worker, so
the send path never waits for push rules or gateways. The position is not stored: events
persisted while the server is down, or still queued when it stops, are not pushed (a push
is a prompt to sync, not the data itself; a stored per-pusher position would add catch-up).

The worker evaluates each event for the room's joined local users that have HTTP pushers,
and the invitee of an invite (never the sender), then hands the notification to one queue per pusher: each pusher gets
its notifications in order, one request at a time, and a slow or failing gateway delays
only its own pushers. A failed request (connection error, timeout, non-2xx) is retried with
exponential backoff, at most MAX_ATTEMPTS times; then that notification is dropped. A
pushkey the gateway lists in `rejected` removes the pusher (spec: the homeserver "MUST"
remove it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from starling.address_guard import AddressPolicy, guarded_socket_factory, is_blocked_error
from starling.protocol.event import Event
from starling.protocol.push_rules import notifies
from starling.push.service import PushRulesService
from starling.storage.memberships import MembershipStore
from starling.storage.pushers import PusherStore

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 20.0
MAX_QUEUED_EVENTS = 10_000
MAX_QUEUED_PER_PUSHER = 1_000
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
    get_events: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
) -> RoomDetails:
    """Reads room_name, room_alias and sender_display_name from the room's current state.
    `get_events` maps event IDs to stored (event, meta) pairs."""

    async def details(event: Event) -> dict[str, Any]:
        state = await current_state(event.room_id)
        wanted = {
            "room_name": (("m.room.name", ""), "name"),
            "room_alias": (("m.room.canonical_alias", ""), "alias"),
            "sender_display_name": (("m.room.member", event.sender), "displayname"),
        }
        ids = [state[key] for key, _ in wanted.values() if key in state]
        found = await get_events(ids) if ids else {}
        out: dict[str, Any] = {}
        for name, (key, field) in wanted.items():
            pair = found.get(state.get(key, ""))
            value = pair[0].content.get(field) if pair is not None else None
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


class PushSender:
    """Background delivery of notifications to HTTP push gateways."""

    def __init__(
        self,
        pushers: PusherStore,
        memberships: MembershipStore,
        push_rules: PushRulesService,
        unread: BadgeCount,
        *,
        address_policy: AddressPolicy | None = None,
        verify_certificates: bool = True,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
        room_details: RoomDetails = _no_details,
    ) -> None:
        self._pushers = pushers
        self._room_details = room_details
        # Pusher URLs come from users: without this, any user could make the server
        # POST into its own network (ip_range_blacklist, as Synapse applies it to push).
        self._address_policy = address_policy
        self._verify_certificates = verify_certificates
        self._memberships = memberships
        self._push_rules = push_rules
        self._unread = unread
        self.first_backoff = first_backoff
        self._events: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._queues: dict[PusherKey, deque[dict[str, Any]]] = {}
        self._tasks: dict[PusherKey, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._badge_tasks: set[asyncio.Task[None]] = set()

    def on_new_event(self, event: Event, position: int) -> None:
        """A RoomEventService listener: queue the event and wake the worker (no I/O)."""
        if self._worker is None:
            return
        if len(self._events) >= MAX_QUEUED_EVENTS:
            logger.warning("push queue full; event %s not pushed", event.event_id)
            return
        self._events.append(event)
        self._wake.set()

    def badge_changed(self, user_id: str) -> None:
        """The user read something (a read receipt): their gateways get the new unread
        count alone, so a phone's badge follows (a notification with only `counts` and
        `devices`, as the push gateway API allows and Synapse sends)."""
        if self._worker is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_badge(user_id))
        self._badge_tasks.add(task)
        task.add_done_callback(self._badge_tasks.discard)

    async def _send_badge(self, user_id: str) -> None:
        try:
            targets = await self._pushers.list_http_for_users({user_id})
            if not targets.get(user_id):
                return
            unread = await self._unread(user_id)
            for pusher in targets[user_id]:
                body = badge_body(pusher, unread)
                self._enqueue((user_id, pusher["app_id"], pusher["pushkey"]), pusher, body)
        except Exception:
            logger.exception("badge update failed for %s", user_id)

    async def start(self) -> None:
        if self._worker is None:
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
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        tasks = [
            t for t in (self._worker, *self._tasks.values(), *self._badge_tasks) if t is not None
        ]
        self._worker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                event = self._events.popleft()
                try:
                    await self._handle(event)
                except Exception:
                    logger.exception("push evaluation failed for %s", event.event_id)

    async def _handle(self, event: Event) -> None:
        users = set(await self._memberships.get_joined_users(event.room_id))
        if (
            event.type == "m.room.member"
            and event.state_key is not None
            and event.content.get("membership") == "invite"
        ):
            users.add(event.state_key)  # not joined yet: the rule .m.rule.invite_for_me
        users.discard(event.sender)
        targets = await self._pushers.list_http_for_users(users)
        details: dict[str, Any] | None = None
        for user_id in sorted(targets):
            actions = (await self._push_rules.actions_for(user_id, [event])).get(event.event_id)
            if not notifies(actions):
                continue
            unread = await self._unread(user_id)
            if details is None:
                details = await self._room_details(event)
            for pusher in targets[user_id]:
                body = notification_body(
                    event, pusher, actions, unread, user_id=user_id, details=details
                )
                self._enqueue((user_id, pusher["app_id"], pusher["pushkey"]), pusher, body)

    def _enqueue(self, key: PusherKey, pusher: dict[str, Any], body: dict[str, Any]) -> None:
        queue = self._queues.setdefault(key, deque())
        if len(queue) >= MAX_QUEUED_PER_PUSHER:
            queue.popleft()  # the oldest is the least useful prompt
        queue.append(body)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._deliver_all(key, pusher["data"]["url"]))

    async def _deliver_all(self, key: PusherKey, url: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                body = queue[0]
                if await self._deliver(key, url, body) == "rejected":
                    user_id, app_id, pushkey = key
                    await self._pushers.delete(user_id, app_id, pushkey)
                    queue.clear()
                    break
                queue.popleft()
        finally:
            self._tasks.pop(key, None)
            if not queue:
                self._queues.pop(key, None)

    async def _deliver(self, key: PusherKey, url: str, body: dict[str, Any]) -> str:
        """POST one notification, retrying: "sent", "rejected" or "failed"."""
        assert self._session is not None
        delay = self.first_backoff
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
                logger.info("push to %s failed (%s); retry in %.1fs", url, reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        logger.warning("push to %s failed %d times; notification dropped", url, MAX_ATTEMPTS)
        return "failed"
