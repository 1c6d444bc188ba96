"""The E2EE parts of /sync, as SyncExtensions (starling.sync.extension).

- `ToDeviceExtension`, stream "to_device": the syncing device's to-device messages
  (`to_device.events`), acknowledging those the `since` token's response carried; and,
  for that device, `device_one_time_keys_count` and `device_unused_fallback_key_types`,
  which the spec wants in every response (they ride on this extension because they are
  per-device state without a stream of their own).
- `DeviceListsExtension`, stream "device_lists": `device_lists.changed` / `.left` on
  incremental syncs.
"""

from __future__ import annotations

from typing import Any

from starling.e2ee.device_lists import DeviceListTracker
from starling.e2ee.keys import E2eKeyService
from starling.e2ee.to_device import ToDeviceService
from starling.sync.extension import SyncContext
from starling.sync.tokens import SyncToken


class ToDeviceExtension:
    stream_name = "to_device"

    def __init__(self, to_device: ToDeviceService, keys: E2eKeyService) -> None:
        self._to_device = to_device
        self._keys = keys

    def current_position(self) -> int:
        return self._to_device.current_position()

    async def acknowledge(self, user_id: str, device_id: str, token: SyncToken) -> None:
        """The device has processed the /sync response whose `next_batch` is ``token``
        (the WebSocket's `ack` frame): its to-device messages are done with."""
        position = token.streams.get(self.stream_name)
        if position is not None:
            await self._to_device.acknowledge(user_id, device_id, position)

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        if ctx.device_id is None:
            return False
        events = await self._to_device.messages_for_sync(
            ctx.user_id, ctx.device_id, ctx.since, ctx.upto, acknowledge=ctx.acknowledge
        )
        if events:
            response["to_device"] = {"events": events}
        counts, unused = await self._keys.key_counts(ctx.user_id, ctx.device_id)
        # Some clients treat a missing signed_curve25519 count as "unknown"; say 0.
        counts.setdefault("signed_curve25519", 0)
        response["device_one_time_keys_count"] = counts
        response["device_unused_fallback_key_types"] = unused
        return bool(events)


class DeviceListsExtension:
    stream_name = "device_lists"

    def __init__(self, tracker: DeviceListTracker) -> None:
        self._tracker = tracker

    def current_position(self) -> int:
        return self._tracker.current_position()

    async def contribute(self, ctx: SyncContext, response: dict[str, Any]) -> bool:
        # Only incremental syncs carry device_lists (spec: Extensions to /sync).
        if ctx.since is None or ctx.full_state or ctx.since == ctx.upto:
            return False
        found = await self._tracker.changes(ctx.user_id, ctx.since, ctx.upto)
        # Both lists are optional (spec: DeviceLists); an empty one is left out, as
        # ruma-based servers do: a client reads a missing list as empty, and a client
        # waiting for some user in `changed` sees that no change came with a `left`.
        lists = {
            name: users
            for name, users in (("changed", found.changed), ("left", found.left))
            if users
        }
        if not lists:
            return False
        response["device_lists"] = lists
        return True
