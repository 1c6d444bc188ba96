"""Sliding sync's extensions, served from the same streams as /sync's (MSC3885 to-device,
MSC3884 e2ee, MSC3959 account data, MSC3960 receipts, MSC3961 typing).

Each is the /sync `SyncExtension` of that stream, run on a scratch /sync-shaped response
and reshaped: the code that reads typing, receipts, account data, to-device messages and
device-list changes is the one /sync uses. The range of each stream is (the position
this connection's previous response covered, now]; rooms that enter the connection's
view in this response get their current typing, receipts and room account data
(since = None), the others the changes.

- to_device: its own `since`/`next_batch` (the to-device stream position); a `since`
  acknowledges (deletes) what the response it came from carried, as on /sync.
- e2ee: `device_lists` (changes only, none on a connection's first response),
  `device_one_time_keys_count` and `device_unused_fallback_key_types` always.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starling.sync.extension import SyncContext, SyncExtension
from starling.sync.sliding.request import ExtensionsRequest
from starling.sync.tokens import SyncToken

logger = logging.getLogger(__name__)

KeyCounts = Callable[[str, str], Awaitable[tuple[dict[str, int], list[str]]]]


@dataclass
class ExtensionRooms:
    """The rooms each scoped extension covers in this response."""

    account_data: frozenset[str]
    receipts: frozenset[str]
    typing: frozenset[str]
    # Rooms new to this connection in this response: their current state, not changes.
    fresh: frozenset[str]


class SlidingExtensions:
    def __init__(self, extensions: Mapping[str, SyncExtension], key_counts: KeyCounts) -> None:
        self._ext = extensions
        self._key_counts = key_counts

    async def build(
        self,
        user_id: str,
        device_id: str | None,
        req: ExtensionsRequest,
        prev: SyncToken | None,
        now: SyncToken,
        rooms: ExtensionRooms,
        streams: dict[str, int],
    ) -> tuple[dict[str, Any], bool]:
        """The `extensions` object and whether it holds anything new. `streams` is the
        next snapshot's positions: a stream whose extension failed keeps its old one."""
        out: dict[str, Any] = {}
        has_data = False

        async def run(name: str, since: int | None, joined: frozenset[str]) -> dict[str, Any]:
            ext = self._ext.get(name)
            scratch: dict[str, Any] = {"rooms": {"join": {}}}
            if ext is None:
                return scratch
            upto = now.streams.get(name, 0)
            ctx = SyncContext(
                user_id=user_id,
                device_id=device_id,
                since=None if since is None else min(since, upto),
                upto=upto,
                joined_rooms=joined,
            )
            try:
                await ext.contribute(ctx, scratch)
            except Exception:
                logger.exception("sliding sync extension %r failed for %s", name, user_id)
                if prev is not None and name in prev.streams:
                    streams[name] = prev.streams[name]
                else:
                    streams.pop(name, None)
            return scratch

        def since_of(name: str) -> int | None:
            return None if prev is None else prev.streams.get(name)

        if req.to_device and device_id is not None:
            scratch = await run("to_device", req.to_device_since, frozenset())
            events = scratch.get("to_device", {}).get("events", [])
            upto = now.streams.get("to_device", 0)
            out["to_device"] = {"next_batch": str(upto), "events": events}
            has_data |= bool(events)

        if req.e2ee and device_id is not None:
            counts, unused = await self._key_counts(user_id, device_id)
            counts.setdefault("signed_curve25519", 0)
            e2ee: dict[str, Any] = {
                "device_one_time_keys_count": counts,
                "device_unused_fallback_key_types": unused,
            }
            since = since_of("device_lists")
            if since is not None:
                lists = (await run("device_lists", since, frozenset())).get("device_lists")
                if lists:
                    e2ee["device_lists"] = lists
                    has_data |= bool(lists.get("changed") or lists.get("left"))
            out["e2ee"] = e2ee

        async def per_room(
            name: str, scope: frozenset[str]
        ) -> tuple[dict[str, Any], dict[str, Any]]:
            """(the scratch of the changes, the scratch of fresh rooms' current data)."""
            since = since_of(name)
            if since is None:
                return await run(name, None, scope), {"rooms": {"join": {}}}
            known = await run(name, since, scope - rooms.fresh)
            fresh = await run(name, None, scope & rooms.fresh) if scope & rooms.fresh else {}
            return known, fresh

        if req.account_data is not None:
            changes, fresh = await per_room("account_data", rooms.account_data)
            global_events = changes.get("account_data", {}).get("events", [])
            by_room: dict[str, list[dict[str, Any]]] = {}
            for scratch in (changes, fresh):
                for room_id, entry in scratch.get("rooms", {}).get("join", {}).items():
                    events = entry.get("account_data", {}).get("events", [])
                    if events:
                        by_room.setdefault(room_id, []).extend(events)
            out["account_data"] = {"global": global_events, "rooms": by_room}
            has_data |= bool(global_events or by_room)

        for name, kind in (("receipts", "m.receipt"), ("typing", "m.typing")):
            scoped = req.receipts if name == "receipts" else req.typing
            if scoped is None:
                continue
            scope = rooms.receipts if name == "receipts" else rooms.typing
            changes, fresh = await per_room(name, scope)
            found: dict[str, Any] = {}
            for scratch in (changes, fresh):
                for room_id, entry in scratch.get("rooms", {}).get("join", {}).items():
                    for event in entry.get("ephemeral", {}).get("events", []):
                        if event.get("type") == kind:
                            found[room_id] = event
            out[name] = {"rooms": found}
            has_data |= bool(found)
        return out, has_data
