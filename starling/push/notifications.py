"""GET /notifications: the events a user was notified about, newest first.

Spec: client-server-api modules/push.md, notifications.yaml
(#get_matrixclientv3notifications). The notifications are those the push evaluator stored
(starling/push/evaluator.py), with the actions the user's rules gave each event then.
`read` is true when the user's read receipt in the room (unthreaded, or of the event's
thread) is at or after the event. `from` is the `next_token` of an earlier page: the
stream position of its last (oldest) notification; a page shorter than `limit` is the
last and has no `next_token`. `only=highlight` keeps the highlighted ones (other values
of `only` filter nothing, as in Synapse).
"""

from __future__ import annotations

from typing import Any

from starling.errors import invalid_param
from starling.protocol.event import Event
from starling.rooms.client_format import EventFormatter, FormatOptions
from starling.storage.events import EventStore
from starling.storage.push_actions import PushActionStore
from starling.storage.receipts import ReceiptStore

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAIN_THREAD = "main"  # as starling.receipts.service names the main timeline


def _thread_of(event: Event) -> str:
    """The thread an event belongs to (as the receipts domain counts it)."""
    relates = event.content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread":
        root = relates.get("event_id")
        if isinstance(root, str):
            return root
    return MAIN_THREAD


def parse_from(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) >= 2**63:
        raise invalid_param("'from' is not a token this server gave")
    return int(value)


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise invalid_param("'limit' must be an integer") from None
    if limit < 0:
        raise invalid_param("'limit' must not be negative")
    return min(limit, MAX_LIMIT)


class NotificationsService:
    def __init__(
        self,
        actions: PushActionStore,
        events: EventStore,
        receipts: ReceiptStore,
        formatter: EventFormatter,
    ) -> None:
        self._actions = actions
        self._events = events
        self._receipts = receipts
        self._formatter = formatter

    async def get(
        self, user_id: str, from_token: str | None, limit_param: str | None, only: str | None
    ) -> dict[str, Any]:
        before = parse_from(from_token)
        limit = parse_limit(limit_param)
        if limit == 0:
            return {"notifications": []}
        found = await self._actions.for_user(user_id, before, limit, only == "highlight")
        loaded = await self._events.get_events_with_meta(a.event_id for a in found)
        # A purged event is deleted, or kept as an outlier outside every timeline
        # (admin purge_history): either way it is no longer a notification.
        present = [a for a in found if a.event_id in loaded and not loaded[a.event_id].meta.outlier]
        read = await self._receipts.get_read_positions(
            user_id, sorted({a.room_id for a in present})
        )
        formatted = await self._formatter.format(
            [loaded[a.event_id] for a in present],
            FormatOptions(user_id=user_id, include_room_id=False),
        )
        notifications = []
        for action, event in zip(present, formatted, strict=True):
            room_read = read.get(action.room_id, {})
            thread = _thread_of(loaded[action.event_id].event)
            upto = max(room_read.get("", -1), room_read.get(thread, -1))
            notifications.append(
                {
                    "actions": action.actions,
                    "event": event,
                    "read": action.stream_ordering <= upto,
                    "room_id": action.room_id,
                    "ts": action.ts,
                    # Push rules have no profile tags any more (they were dropped from
                    # the spec's push rules); Synapse still sends the key, as null, and
                    # clients and SyTest look for it.
                    "profile_tag": None,
                }
            )
        out: dict[str, Any] = {"notifications": notifications}
        if len(found) == limit:
            out["next_token"] = str(found[-1].stream_ordering)
        return out
