"""Delayed events (MSC4140, which Element Call uses for "leave the call if I vanish"), in
the unstable form matrix-js-sdk and Synapse speak:

- scheduling: the ordinary `PUT /rooms/{roomId}/send/{eventType}/{txnId}` and
  `PUT /rooms/{roomId}/state/{eventType}/{stateKey}` with the query parameter
  `org.matrix.msc4140.delay` (milliseconds) answer `{"delay_id": ...}` instead of
  sending. A retried send (same device and transaction ID) schedules once.
- managing, at `/_matrix/client/unstable/org.matrix.msc4140/delayed_events`:
  `POST /{delay_id}/{action}` (send, cancel, restart; the delay ID is the credential, so
  no access token is needed, as the MSC has it) and the earlier `POST /{delay_id}`
  with `{"action": ...}`; `GET` lists the user's scheduled ones (`{"delayed_events"}`)
  or, with `status=finalised`, those sent or cancelled in the last day.

The events are stored (delayed_events), so a restart keeps them; one background task
sends each when due (at most MAX_DELAY_MS after scheduling), as the user, checked like
any event they send then. An event that cannot be sent when due is cancelled with the
error; a manual `send` that fails answers that error and stays scheduled. A send claims
the event first, so the timer and a manual send never both send it. Limits:
MAX_DELAY_MS (else 400 M_MAX_DELAY_EXCEEDED with `max_delay`) and MAX_SCHEDULED per
user (else 429 M_LIMIT_EXCEEDED).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from starling.errors import MatrixError, invalid_param, limit_exceeded, not_found
from starling.rooms.client_events import ClientEvents
from starling.rooms.due_timer import DueTimer
from starling.storage.delayed_events import DelayedEvent, DelayedEventStore

logger = logging.getLogger(__name__)

UNSTABLE = "org.matrix.msc4140"
DELAY_PARAM = f"{UNSTABLE}.delay"
MAX_DELAY_MS = 24 * 3600 * 1000
MAX_SCHEDULED = 100
FINALISED_KEPT_MS = 24 * 3600 * 1000
DUE_BATCH = 50
IDLE_WAKE_SECONDS = 3600.0
ACTIONS = ("send", "cancel", "restart")
REDACTION = "m.room.redaction"


def fake_delay_id() -> str:
    """What a shadow-banned user is told: looks scheduled, is not."""
    return "syd_" + secrets.token_urlsafe(18)


def parse_delay(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or int(raw) <= 0:
        raise invalid_param(f"'{DELAY_PARAM}' must be a positive number of milliseconds")
    delay = int(raw)
    if delay > MAX_DELAY_MS:
        raise MatrixError(
            400,
            "M_MAX_DELAY_EXCEEDED",
            "The requested delay exceeds the allowed maximum.",
            max_delay=MAX_DELAY_MS,
        )
    return delay


def _view(event: DelayedEvent) -> dict[str, Any]:
    out: dict[str, Any] = {
        "delay_id": event.delay_id,
        "room_id": event.room_id,
        "type": event.event_type,
        "delay": event.delay,
        "running_since": event.running_since,
        "content": event.content,
    }
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.event_id is not None:
        out["event_id"] = event.event_id
    if event.finalised_ts is not None:
        out["origin_server_ts"] = event.finalised_ts
    if event.error is not None:
        out["error"] = event.error
    return out


class DelayedEvents:
    def __init__(
        self,
        store: DelayedEventStore,
        events: ClientEvents,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._events = events
        self._clock_ms = clock_ms
        self._timer = DueTimer(
            "delayed-events", self._run_due, lambda: self._clock_ms(), IDLE_WAKE_SECONDS
        )
        # Set with workers on the processes that do not run the sending task: a change
        # of the schedule wakes the one that does (starling/cluster).
        self.relay: Callable[[], None] | None = None

    # --- scheduling and managing ----------------------------------------------------------

    async def send(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        delay_param: str | None,
        txn_id: str,
        *,
        redacts: str | None = None,
        shadow_banned: bool = False,
    ) -> dict[str, Any]:
        """A client's message send: scheduled (`{"delay_id"}`) when it asks for a delay,
        else sent now (`{"event_id"}`). A redaction is never delayed: it is sent at once
        whatever the delay parameter says."""
        if delay_param is None or event_type == REDACTION:
            event_id = await self._events.send(
                room_id,
                user_id,
                event_type,
                content,
                device_id=device_id,
                txn_id=txn_id,
                redacts=redacts,
                shadow_banned=shadow_banned,
            )
            return {"event_id": event_id}
        return await self.schedule(
            user_id,
            device_id,
            room_id,
            event_type,
            None,
            content,
            delay_param,
            txn_id,
            shadow_banned=shadow_banned,
        )

    async def set_state(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_type: str,
        state_key: str,
        content: dict[str, Any],
        delay_param: str | None,
        *,
        guest: bool = False,
        shadow_banned: bool = False,
    ) -> dict[str, Any]:
        """A client's state PUT: scheduled (`{"delay_id"}`) when it asks for a delay, else
        set now (`{"event_id"}`)."""
        if delay_param is None:
            event_id = await self._events.set_state(
                room_id,
                user_id,
                event_type,
                state_key,
                content,
                guest=guest,
                shadow_banned=shadow_banned,
            )
            return {"event_id": event_id}
        return await self.schedule(
            user_id,
            device_id,
            room_id,
            event_type,
            state_key,
            content,
            delay_param,
            shadow_banned=shadow_banned,
        )

    async def schedule(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_type: str,
        state_key: str | None,
        content: dict[str, Any],
        delay_param: str,
        txn_id: str | None = None,
        *,
        shadow_banned: bool = False,
    ) -> dict[str, Any]:
        if shadow_banned:
            # Scheduled nowhere: the timer would otherwise send it for real later.
            return {"delay_id": fake_delay_id()}
        delay = parse_delay(delay_param)
        if await self._store.count_scheduled(user_id) >= MAX_SCHEDULED:
            raise limit_exceeded(60_000)
        now = self._clock_ms()
        # Unambiguous whatever the parts hold (JSON; PostgreSQL text refuses NUL).
        txn_key = (
            None if txn_id is None else orjson.dumps([user_id, device_id, room_id, txn_id]).decode()
        )
        delay_id = await self._store.add(
            DelayedEvent(
                delay_id=fake_delay_id(),
                user_id=user_id,
                device_id=device_id,
                room_id=room_id,
                event_type=event_type,
                state_key=state_key,
                content=content,
                delay=delay,
                running_since=now,
                send_ts=now + delay,
                status="scheduled",
            ),
            txn_key,
        )
        self._changed()
        return {"delay_id": delay_id}

    async def act(self, delay_id: str, action: Any) -> dict[str, Any]:
        """send, cancel or restart (MSC4140 "Managing scheduled delayed events")."""
        if action not in ACTIONS:
            raise invalid_param(f"'action' must be one of {', '.join(ACTIONS)}")
        event = await self._store.get(delay_id) if len(delay_id) <= 100 else None
        if event is None:
            raise not_found("No delayed event with that ID")
        now = self._clock_ms()
        if action == "restart":
            if not await self._store.restart(delay_id, now):
                raise self._conflict(await self._store.get(delay_id), action)
        elif action == "cancel":
            if not await self._store.cancel(delay_id, now):
                current = await self._store.get(delay_id)
                if current is None or current.status != "cancelled":
                    raise self._conflict(current, action)  # a retry of a cancel is fine
        else:
            if not await self._store.claim(delay_id):
                current = await self._store.get(delay_id)
                if current is None or current.status != "sent":
                    raise self._conflict(current, action)
                return {}
            try:
                event_id = await self._send(event)
            except MatrixError:
                await self._store.unclaim(delay_id)  # stays scheduled (MSC)
                raise
            await self._store.complete(delay_id, "sent", self._clock_ms(), event_id)
        self._changed()
        return {}

    @staticmethod
    def _conflict(event: DelayedEvent | None, action: str) -> MatrixError:
        status = event.status if event is not None else "gone"
        return MatrixError(409, "M_UNKNOWN", f"Cannot {action} a delayed event that is {status}")

    async def list(self, user_id: str, status: str | None) -> dict[str, Any]:
        if status not in (None, "scheduled", "finalised"):
            raise invalid_param("'status' must be 'scheduled' or 'finalised'")
        if status == "finalised":
            found = [
                e
                for e in await self._store.for_user(user_id, None, 2 * MAX_SCHEDULED + 100)
                if e.status in ("sent", "cancelled")
            ]
        else:
            found = await self._store.for_user(user_id, "scheduled", MAX_SCHEDULED)
        return {"delayed_events": [_view(e) for e in found]}

    # --- the timer --------------------------------------------------------------------------

    def _changed(self) -> None:
        self._timer.wake()
        if self.relay is not None:
            self.relay()

    def wake_here(self) -> None:
        """Another process changed the schedule: look at it again."""
        self._timer.wake()

    async def start(self) -> None:
        if not self._timer.running:
            await self._store.reset_claims()
            self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _run_due(self) -> int | None:
        """Send what is due, forget old finalised ones; the next send time."""
        now = self._clock_ms()
        for event in await self._store.due(now, DUE_BATCH):
            await self._send_due(event)
        await self._store.prune_finalised(now - FINALISED_KEPT_MS)
        return await self._store.next_send_ts()

    async def _send_due(self, event: DelayedEvent) -> None:
        if not await self._store.claim(event.delay_id):
            return  # sent or cancelled meanwhile
        try:
            event_id = await self._send(event)
        except MatrixError as e:
            # Not sendable now (left the room, no power): cancelled with the reason.
            await self._store.complete(
                event.delay_id,
                "cancelled",
                self._clock_ms(),
                error={"errcode": e.errcode, "error": e.error},
            )
            return
        await self._store.complete(event.delay_id, "sent", self._clock_ms(), event_id)

    async def _send(self, event: DelayedEvent) -> str:
        if event.state_key is not None:
            return await self._events.set_state(
                event.room_id, event.user_id, event.event_type, event.state_key, event.content
            )
        return await self._events.send(
            event.room_id,
            event.user_id,
            event.event_type,
            event.content,
            device_id=None,
            txn_id=event.delay_id,
        )
