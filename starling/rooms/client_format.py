"""Events as clients see them (spec: client-server-api "Room Event Format", ClientEvent).

The PDU keeps only what clients read (event_id, type, content, sender,
origin_server_ts, room_id, state_key) plus `unsigned`: `age`, `transaction_id` (for the
device that sent it only), `prev_content`/`prev_sender`/`replaces_state` (from the state
event it replaced) and `redacted_because`. A redacted event is served in its redacted
form. A redaction's target is given both at the top level and in `content`, whichever
one the room version stores, so every client finds it. `event_format=federation` gives
the PDU itself.

Formatting takes a batch: the replaced state events and the redaction events are
loaded in one read each, and the bundled aggregations (`unsigned.m.relations`: threads,
edits, references) come from one call of the bundler for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.protocol.event import Event
from starling.protocol.redaction import RedactionError, redact
from starling.storage.events import EventMeta, EventStore, StoredEvent

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class FormatOptions:
    """Who asks, and how they want events shaped."""

    user_id: str | None = None
    device_id: str | None = None
    include_room_id: bool = True
    event_format: str = "client"  # or "federation"
    event_fields: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class ThreadBundle:
    """The m.thread aggregation of a thread root."""

    latest: StoredEvent
    count: int
    participated: bool


@dataclass
class Bundle:
    """An event's bundled aggregations, before formatting (spec: "Aggregations of child
    events")."""

    thread: ThreadBundle | None = None
    replace: StoredEvent | None = None  # the most recent valid edit
    references: list[str] | None = None


# Bundled aggregations for a batch of events, as seen by a user: event ID -> Bundle. It
# includes the bundles of the thread roots' latest events (their edits).
Bundler = Callable[[Sequence[StoredEvent], str | None], Awaitable[Mapping[str, Bundle]]]
_NO_BUNDLES: Mapping[str, Bundle] = {}


def now_ms() -> int:
    return int(time.time() * 1000)


def redacted_pdu(event: Event) -> JsonDict:
    try:
        return redact(event.pdu, event.room_version)
    except RedactionError:
        return {k: event.pdu[k] for k in ("type", "sender", "room_id") if k in event.pdu}


def stripped_state_event(event: Event) -> JsonDict:
    """The stripped form used in invite_state and knock_state."""
    out: JsonDict = {
        "type": event.type,
        "state_key": event.state_key if event.state_key is not None else "",
        "content": event.content,
        "sender": event.sender,
    }
    return out


def only_fields(event: JsonDict, paths: Sequence[tuple[str, ...]]) -> JsonDict:
    """Keep only the given dot-separated paths of an event (the filter's event_fields)."""
    out: JsonDict = {}
    for path in paths:
        src: Any = event
        for name in path[:-1]:
            src = src.get(name) if isinstance(src, dict) else None
        if not isinstance(src, dict) or path[-1] not in src:
            continue
        dst = out
        for name in path[:-1]:
            nxt = dst.get(name)
            if not isinstance(nxt, dict):
                nxt = {}
                dst[name] = nxt
            dst = nxt
        dst[path[-1]] = src[path[-1]]
    return out


class EventFormatter:
    def __init__(self, events: EventStore) -> None:
        self._events = events
        self._bundler: Bundler | None = None

    def use_aggregations(self, bundler: Bundler) -> None:
        """Add bundled aggregations (unsigned.m.relations), one bundler call per batch."""
        self._bundler = bundler

    async def format(
        self, pairs: Sequence[StoredEvent], opts: FormatOptions, now: int | None = None
    ) -> list[JsonDict]:
        """Client (or federation) JSON for each event, in order."""
        if not pairs:
            return []
        now = now if now is not None else now_ms()
        related: set[str] = set()
        for _event, meta in pairs:
            if meta.replaces_state is not None:
                related.add(meta.replaces_state)
            if meta.redacted_by is not None:
                related.add(meta.redacted_by)
        loaded = await self._events.get_events_with_meta(related) if related else {}
        bundles = _NO_BUNDLES
        if self._bundler is not None:
            bundles = await self._bundler(pairs, opts.user_id)
        return [self._one(event, meta, opts, now, loaded, bundles) for event, meta in pairs]

    async def format_one(self, pair: StoredEvent, opts: FormatOptions) -> JsonDict:
        return (await self.format([pair], opts))[0]

    def _one(
        self,
        event: Event,
        meta: EventMeta,
        opts: FormatOptions,
        now: int,
        loaded: Mapping[str, StoredEvent],
        bundles: Mapping[str, Bundle] = _NO_BUNDLES,
    ) -> JsonDict:
        pdu = event.pdu
        redaction: StoredEvent | None = None
        if meta.redacted_by is not None:
            redaction = loaded.get(meta.redacted_by)
            pdu = redacted_pdu(event)
        unsigned: JsonDict = {"age": max(0, now - event.origin_server_ts)}
        if (
            meta.txn_id is not None
            and opts.device_id is not None
            and meta.device_id == opts.device_id
            and event.sender == opts.user_id
        ):
            unsigned["transaction_id"] = meta.txn_id
        if meta.replaces_state is not None:
            unsigned["replaces_state"] = meta.replaces_state
            prev = loaded.get(meta.replaces_state)
            if prev is not None:
                prev_event, prev_meta = prev
                prev_pdu = prev_event.pdu
                if prev_meta.redacted_by is not None:
                    prev_pdu = redacted_pdu(prev_event)
                prev_content = prev_pdu.get("content")
                unsigned["prev_content"] = prev_content if isinstance(prev_content, dict) else {}
                unsigned["prev_sender"] = prev_event.sender
        if meta.redacted_by is not None:
            # Synapse names the redaction beside the event itself (clients read either).
            unsigned["redacted_by"] = meta.redacted_by
        if redaction is not None:
            # Formatted plainly: a redaction's own redacted_because is never needed.
            unsigned["redacted_because"] = self._one(
                redaction.event,
                redaction.meta,
                FormatOptions(opts.user_id, opts.device_id, opts.include_room_id),
                now,
                {},
            )
        bundle = bundles.get(event.event_id)
        if bundle is not None:
            relations = self._relations(bundle, opts, now, bundles)
            if relations:
                unsigned["m.relations"] = relations
        if opts.event_format == "federation":
            # The PDU as servers exchange it, plus its event_id (which room versions
            # 3 and later leave out of the PDU): Synapse's federation format has it.
            out = dict(pdu)
            out["event_id"] = event.event_id
            merged = dict(out.get("unsigned") or {})
            merged.update(unsigned)
            out["unsigned"] = merged
            return out
        content = pdu.get("content")
        if not isinstance(content, dict):
            content = {}
        out = {
            "event_id": event.event_id,
            "type": event.type,
            "content": content,
            "sender": event.sender,
            "origin_server_ts": event.origin_server_ts,
            "unsigned": unsigned,
        }
        if opts.include_room_id:
            out["room_id"] = event.room_id
        if event.state_key is not None:
            out["state_key"] = event.state_key
        if event.type == "m.room.redaction" and meta.redacted_by is None:
            target = event.redacts
            if target is not None:
                out["redacts"] = target
                if content.get("redacts") != target:
                    out["content"] = {**content, "redacts": target}
        if opts.event_fields is not None:
            return only_fields(out, opts.event_fields)
        return out

    def _relations(
        self, bundle: Bundle, opts: FormatOptions, now: int, bundles: Mapping[str, Bundle]
    ) -> JsonDict:
        """unsigned.m.relations; the events in it are formatted like the event itself."""
        inner = FormatOptions(opts.user_id, opts.device_id, opts.include_room_id, opts.event_format)
        out: JsonDict = {}
        if bundle.thread is not None:
            latest, latest_meta = bundle.thread.latest
            # The latest reply's own bundle never has a thread (a reply cannot be a
            # root), so this recursion stops there.
            out["m.thread"] = {
                "latest_event": self._one(latest, latest_meta, inner, now, {}, bundles),
                "count": bundle.thread.count,
                "current_user_participated": bundle.thread.participated,
            }
        if bundle.replace is not None:
            out["m.replace"] = self._one(bundle.replace.event, bundle.replace.meta, inner, now, {})
        if bundle.references:
            out["m.reference"] = {"chunk": [{"event_id": eid} for eid in bundle.references]}
        return out
