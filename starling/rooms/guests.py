"""Guests leave rooms that stop admitting them (spec: client-server-api
modules/guest_access.md, "Server behaviour": when m.room.guest_access stops being
`can_join`, the server MUST set its guests' membership to leave)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from starling.errors import MatrixError
from starling.protocol.event import Event
from starling.rooms.membership import MembershipService
from starling.storage.memberships import MembershipStore

logger = logging.getLogger(__name__)

GuestFilter = Callable[[Iterable[str]], Awaitable[set[str]]]


class GuestEvictor:
    def __init__(
        self, memberships: MembershipStore, membership: MembershipService, guests_among: GuestFilter
    ) -> None:
        self._memberships = memberships
        self._membership = membership
        self._guests_among = guests_among
        self._tasks: set[asyncio.Task[list[str]]] = set()

    def on_event(self, event: Event, position: int) -> None:
        """RoomEventService listener: a guest_access change that shuts guests out."""
        if event.type != "m.room.guest_access" or event.state_key != "":
            return
        if event.content.get("guest_access") == "can_join":
            return
        task = asyncio.get_running_loop().create_task(self.evict(event.room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def evict(self, room_id: str) -> list[str]:
        """Make every joined local guest leave; returns who left."""
        joined = await self._memberships.get_joined_users(room_id)
        left = []
        for user_id in sorted(await self._guests_among(joined)):
            try:
                await self._membership.leave(room_id, user_id, "Guest access was turned off")
                left.append(user_id)
            except MatrixError as e:
                logger.warning("could not remove guest %s from %s: %s", user_id, room_id, e)
        return left
