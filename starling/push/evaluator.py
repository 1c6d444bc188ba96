"""The push evaluator: which local users each new event notifies, stored.

Spec: client-server-api modules/push.md ("Receiving notifications"). A background task
reads the events stream from a position stored in the database (push_evaluator_position),
evaluates each timeline event against the push rules of the room's joined local users
(and of the invitee of an invite, also one from another server to a room this server is
not in: an out-of-band member event with a stream position; never the sender, never a
user who ignores the sender),
and stores the events that `notify` (event_push_actions) in the same transaction that
moves the position past them. So:

- GET /notifications reads what was stored (starling/push/notifications.py);
- HTTP pushers deliver from it, each from its own stored position
  (starling/push/delivery.py), and after a restart go on where they stopped;
- events persisted while the server was down (arrived over federation at start, or
  written by a previous run that stopped before evaluating them) are evaluated when it
  starts: nothing depends on the in-memory new-event listener but the wake-up.

This is Synapse's design (bulk push rule evaluation into event_push_actions, pushers with
last_stream_ordering), done after commit rather than inside it, so sending an event never
waits for the rules of every member. Members are those joined when the event is evaluated,
which, for a live event, is a moment after it was sent. Unread counts in /sync are computed
separately (starling/receipts/unread.py) and do not read this table.

Rows older than RETENTION_MS are pruned (Synapse keeps a month too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starling.account_data.service import AccountDataService
from starling.protocol.event import Event, StateKey
from starling.protocol.push_rules import is_highlight, notifies
from starling.push.service import PushRulesService
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.push_actions import PushAction, PushActionStore

logger = logging.getLogger(__name__)

BATCH_EVENTS = 100
RETENTION_MS = 30 * 24 * 3600 * 1000
PRUNE_EVERY_SECONDS = 3600.0
RETRY_SECONDS = 1.0


class PushEvaluator:
    def __init__(
        self,
        store: PushActionStore,
        events: EventStore,
        memberships: MembershipStore,
        push_rules: PushRulesService,
        account_data: AccountDataService,
        current_position: Callable[[], int],
        is_local: Callable[[str], bool],
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._events = events
        self._memberships = memberships
        self._push_rules = push_rules
        self._account_data = account_data
        self._current_position = current_position
        self._is_local = is_local
        self._clock_ms = clock_ms
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._position = 0
        self._idle = asyncio.Event()
        # Told which users got new notifications (the push sender wakes their pushers).
        self.on_notified: Callable[[set[str]], None] | None = None

    @property
    def position(self) -> int:
        """The events-stream position evaluated up to (tests wait on it)."""
        return self._position

    def on_new_event(self, event: Event, position: int) -> None:
        """A RoomEventService listener: only a wake-up (the task reads the stream)."""
        self._idle.clear()
        self._wake.set()

    def on_state_change(
        self, room_id: str, changed: Mapping[StateKey, str | None], position: int
    ) -> None:
        """A RoomEventService state listener: a wake-up for out-of-band member events
        (an invite from another server), which reach no new-event listener."""
        if any(etype == "m.room.member" for etype, _ in changed):
            self._idle.clear()
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._position = await self._store.evaluator_position(self._current_position())
            self._wake.set()  # catch up on whatever was persisted since the last run
            self._task = asyncio.create_task(self._run(), name="push-evaluator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def caught_up(self) -> None:
        """Wait until every event persisted so far is evaluated (for tests)."""
        while self._position < self._current_position():
            self._wake.set()
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        last_prune = 0.0
        while True:
            try:
                if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                    last_prune = time.monotonic()
                    await self._store.prune(self._clock_ms() - RETENTION_MS)
                self._wake.clear()
                if not await self._evaluate_next():
                    self._idle.set()
                    await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("push evaluation failed; retrying")
                await asyncio.sleep(RETRY_SECONDS)

    async def _evaluate_next(self) -> bool:
        """Evaluate the next batch of the stream; False when there was nothing new."""
        upto = self._current_position()
        if upto <= self._position:
            return False
        rows = await self._store.timeline_after(self._position, upto, BATCH_EVENTS)
        new_position = rows[-1][1] if len(rows) == BATCH_EVENTS else upto
        loaded = await self._events.get_events_with_meta(eid for eid, _ in rows)
        batch = [(loaded[eid].event, pos) for eid, pos in rows if eid in loaded]
        actions = await self._evaluate(batch)
        await self._store.add(actions, new_position)
        self._position = new_position
        if actions and self.on_notified is not None:
            self.on_notified({a.user_id for a in actions})
        return True

    async def _evaluate(self, batch: list[tuple[Event, int]]) -> list[PushAction]:
        joined = await self._memberships.get_joined_users_for_rooms({e.room_id for e, _ in batch})
        per_user: dict[str, list[Event]] = {}
        positions: dict[str, int] = {}
        for event, position in batch:
            positions[event.event_id] = position
            users = {u for u in joined.get(event.room_id, ()) if self._is_local(u)}
            if (
                event.type == "m.room.member"
                and event.state_key is not None
                and event.content.get("membership") == "invite"
                and self._is_local(event.state_key)
            ):
                users.add(event.state_key)  # not joined yet: the rule .m.rule.invite_for_me
            users.discard(event.sender)
            for user_id in users:
                per_user.setdefault(user_id, []).append(event)
        now = self._clock_ms()
        out: list[PushAction] = []
        for user_id in sorted(per_user):
            ignored = await self._account_data.get_ignored_users(user_id)
            events = [e for e in per_user[user_id] if e.sender not in ignored]
            if not events:
                continue
            evaluated = await self._push_rules.actions_for(user_id, events)
            for event in events:
                found: list[Any] | None = evaluated.get(event.event_id)
                if notifies(found):
                    out.append(
                        PushAction(
                            user_id=user_id,
                            stream_ordering=positions[event.event_id],
                            room_id=event.room_id,
                            event_id=event.event_id,
                            actions=list(found or ()),
                            highlight=is_highlight(found),
                            ts=now,
                        )
                    )
        return out
