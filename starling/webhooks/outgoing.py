"""Outgoing webhooks: a room's events POSTed as JSON to a URL the admin configured.

Per hook, a task reads the events stream from the hook's stored position and queues a
delivery for each event of the room with one of the hook's types (and, when keywords are
set, whose ``body`` contains one, case-insensitively), moving the position in the same
transaction (`storage/webhooks.py`). Deliveries are POSTed oldest first, one at a time::

    POST <url>
    Content-Type: application/json
    X-Starling-Webhook: <hook id>
    X-Starling-Signature: sha256=<hex HMAC-SHA256 of the body with the hook's secret>

    {"hook": "<id>", "event": {<the event in the Client-Server format>}}

A 2xx answer delivers it; anything else is retried after the federation sender's
`BackoffPolicy` wait (the loop is `starling.delivery.loop.DeliveryLoop`, shared with the
application-service sender), and after ``max_attempts`` the delivery is kept as a dead letter (never sent again) and the next one
goes. Deliveries survive restarts. The URL is the admin's, so no address policy applies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp
import orjson

from starling.appservice.sender import client_event
from starling.config import OutgoingWebhook
from starling.delivery.loop import Attempt, DeliveryLoop
from starling.federation.sender.backoff import BackoffPolicy
from starling.protocol.event import Event
from starling.storage.appservice import AppServiceStore
from starling.storage.events import EventStore
from starling.storage.webhooks import Delivery, WebhookStore

logger = logging.getLogger(__name__)

BATCH = 100
TIMEOUT = 30.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wanted(hook: OutgoingWebhook, event: Event) -> bool:
    if event.room_id != hook.room_id or event.type not in hook.event_types:
        return False
    if not hook.keywords:
        return True
    content = event.pdu.get("content")
    text = content.get("body") if isinstance(content, dict) else None
    if not isinstance(text, str):
        return False
    folded = text.casefold()
    return any(k.casefold() in folded for k in hook.keywords)


class OutgoingWebhooks:
    def __init__(
        self,
        hooks: Sequence[OutgoingWebhook],
        store: WebhookStore,
        stream: AppServiceStore,
        events: EventStore,
        current_position: Callable[[], int],
        *,
        verify_certificates: bool = True,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self._hooks = list(hooks)
        self._store = store
        self._stream = stream
        self._events = events
        self._current_position = current_position
        self._verify = verify_certificates
        self._backoff = backoff or BackoffPolicy()
        self._loops: dict[str, DeliveryLoop[Delivery]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self._hooks:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._verify, limit=20)
        )
        for hook in self._hooks:
            await self._store.position(hook.id, self._current_position())
            loop = DeliveryLoop[Delivery](
                f"webhook-{hook.id}",
                oldest=functools.partial(self._store.next_delivery, hook.id),
                send=functools.partial(self._attempt, hook),
                fill=functools.partial(self._queue_next, hook),
                policy=self._backoff,
            )
            self._loops[hook.id] = loop
            loop.start()

    async def stop(self) -> None:
        loops = list(self._loops.values())
        self._loops.clear()
        for loop in loops:
            await loop.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def on_new_event(self, event: Event, position: int) -> None:
        """A room-events listener: only a wake-up."""
        for hook in self._hooks:
            loop = self._loops.get(hook.id)
            if loop is not None and hook.room_id == event.room_id:
                loop.wake.set()

    async def _attempt(self, hook: OutgoingWebhook, delivery: Delivery) -> Attempt:
        error = await self._post(hook, delivery.body.encode())
        if error is None:
            await self._store.delivered(hook.id, delivery.delivery_id)
            return Attempt.DELIVERED
        dead = delivery.attempts + 1 >= hook.max_attempts
        await self._store.failed(hook.id, delivery.delivery_id, error, dead)
        if not dead:
            return Attempt.RETRY
        logger.warning(
            "webhook %s: delivery %d is a dead letter after %d attempts: %s",
            hook.id,
            delivery.delivery_id,
            delivery.attempts + 1,
            error,
        )
        return Attempt.GIVEN_UP

    async def _queue_next(self, hook: OutgoingWebhook) -> bool:
        position = await self._store.position(hook.id, self._current_position())
        upto = self._current_position()
        if upto <= position:
            return False
        rows = await self._stream.stream_event_ids(position, upto, BATCH)
        new_position = rows[-1][1] if len(rows) == BATCH else upto
        stored = await self._events.get_events_with_meta(eid for eid, _ in rows)
        now = int(time.time() * 1000)
        bodies = []
        for event_id, stream_position in rows:
            pair = stored.get(event_id)
            if pair is not None and wanted(hook, pair.event):
                body = {"hook": hook.id, "event": client_event(pair, now)}
                bodies.append((stream_position, orjson.dumps(body).decode()))
        await self._store.enqueue(hook.id, bodies, new_position)
        return True

    async def _post(self, hook: OutgoingWebhook, body: bytes) -> str | None:
        """None when the receiver accepted it, else what went wrong."""
        assert self._session is not None
        headers = {
            "Content-Type": "application/json",
            "X-Starling-Webhook": hook.id,
            "X-Starling-Signature": signature(hook.secret, body),
        }
        try:
            async with self._session.post(
                hook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                allow_redirects=False,
            ) as resp:
                await resp.content.read(64 * 1024)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}"

    async def dead_letters(self, hook_id: str) -> list[tuple[int, int, str | None]]:
        return await self._store.dead_letters(hook_id)
