"""A client's writes to a room: the rules the Client-Server API attaches to sending a
message, setting state and redacting, on top of building and authorising the event.

- A member event obeys the membership rules whichever endpoint sends it.
- ``m.room.canonical_alias`` may only name valid aliases, and this server's must point at
  the room (400 M_BAD_ALIAS otherwise).
- Setting the same state content again (by the same sender) changes nothing: the event
  in place is the answer, as Synapse's.
- A redaction's target must be an event of the room, and redacting someone else's event
  needs the redact power level (spec: "Redactions"); checked under the room's lock.
  Through the redact endpoint it spends ``rc_message`` for one's own event and
  ``rc_admin_redaction`` (when set) for someone else's.
- ``redacts`` is a content key from room version 11 on (top level before it).
- Server modules (`starling.modules`) may refuse a message or state event (403).
- A shadow-banned sender's message, redaction or state event (other than their own
  membership) is answered with a made-up event ID and persisted nowhere (Synapse).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starling.errors import MatrixError, forbidden
from starling.protocol.event import Event, StateKey
from starling.protocol.identifiers import is_valid_room_alias
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import RoomVersion
from starling.ratelimit import RateLimits
from starling.rooms.event_service import RoomEventService, user_power
from starling.rooms.membership import MembershipService
from starling.rooms.shadow_ban import fake_event_id
from starling.storage.aliases import AliasStore
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore

EventCheck = Callable[[Mapping[StateKey, Event], RoomVersion], Awaitable[None]]
# A server module's verdict on a client's event: None allows it, a reason refuses it.
EventPolicy = Callable[[dict[str, Any]], Awaitable[str | None]]


class ClientEvents:
    def __init__(
        self,
        server_name: str,
        room_events: RoomEventService,
        membership: MembershipService,
        events: EventStore,
        aliases: AliasStore,
        memberships: MembershipStore,
        rate_limits: RateLimits,
    ) -> None:
        self._local_suffix = ":" + server_name
        self._room_events = room_events
        self._membership = membership
        self._events = events
        self._aliases = aliases
        self._memberships = memberships
        self._rate_limits = rate_limits
        self._policy: EventPolicy | None = None

    def use_policy(self, policy: EventPolicy) -> None:
        """Server modules' check of a client's events: None allows, a reason refuses."""
        self._policy = policy

    async def _apply_policy(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
    ) -> None:
        if self._policy is None:
            return
        event: dict[str, Any] = {
            "type": event_type,
            "room_id": room_id,
            "sender": sender,
            "content": content,
        }
        if state_key is not None:
            event["state_key"] = state_key
        reason = await self._policy(event)
        if reason is not None:
            raise forbidden(reason)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return sorted(await self._memberships.get_joined_rooms(user_id))

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        *,
        device_id: str | None,
        txn_id: str,
        redacts: str | None = None,
        shadow_banned: bool = False,
    ) -> str:
        """The ID of a message event (a redaction when `redacts` names its target)."""
        if shadow_banned:
            return fake_event_id()
        await self._apply_policy(room_id, sender, event_type, content)
        event = await self._room_events.send(
            room_id,
            sender,
            event_type,
            content,
            device_id=device_id,
            txn_id=txn_id,
            redacts=redacts,
            check=self._redaction_check(room_id, sender, redacts) if redacts else None,
        )
        return event.event_id

    async def set_state(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        state_key: str,
        content: dict[str, Any],
        *,
        guest: bool = False,
        shadow_banned: bool = False,
    ) -> str:
        """The ID of the state event now in place for (event_type, state_key)."""
        if shadow_banned and (event_type != "m.room.member" or state_key != sender):
            return fake_event_id()  # joining and leaving still work
        key = (event_type, state_key)
        if event_type == "m.room.member":
            changed = await self._membership.set_membership(
                room_id, sender, state_key, content, guest=guest
            )
            if changed is None:  # nothing changed: the member event in place stands
                current = await self._room_events.current_state_events(room_id, [key])
                changed = current[key]
            return changed.event_id
        if event_type == "m.room.canonical_alias":
            await self._check_canonical_alias(room_id, content)
        existing = (await self._room_events.current_state_events(room_id, [key])).get(key)
        if existing is not None and existing.sender == sender and existing.content == content:
            return existing.event_id
        await self._apply_policy(room_id, sender, event_type, content, state_key)
        event = await self._room_events.send(room_id, sender, event_type, content, state_key)
        return event.event_id

    async def redact(
        self,
        room_id: str,
        sender: str,
        target_id: str,
        reason: str | None,
        *,
        device_id: str | None,
        txn_id: str,
        rate_limited: bool = True,
        shadow_banned: bool = False,
    ) -> str:
        """The redaction's ID. `rate_limited=False`: an admin's sweep (the admin API), not
        a client's request."""
        if shadow_banned:
            return fake_event_id()
        content: dict[str, Any] = {}
        if reason is not None:
            content["reason"] = reason
        version = await self._events.get_room_version(room_id)
        if version is not None and version.redacts_in_content:
            content["redacts"] = target_id
        event = await self._room_events.send(
            room_id,
            sender,
            "m.room.redaction",
            content,
            device_id=device_id,
            txn_id=txn_id,
            redacts=target_id,
            check=self._redaction_check(room_id, sender, target_id, rate_limited=rate_limited),
        )
        return event.event_id

    async def _check_canonical_alias(self, room_id: str, content: dict[str, Any]) -> None:
        aliases = []
        if content.get("alias") is not None:
            aliases.append(content["alias"])
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list):
            raise MatrixError(400, "M_INVALID_PARAM", "'alt_aliases' must be a list")
        aliases.extend(alt)
        for alias in aliases:
            if not isinstance(alias, str) or not is_valid_room_alias(alias):
                raise MatrixError(400, "M_INVALID_PARAM", f"Invalid alias {alias!r}")
            if alias.endswith(self._local_suffix):
                target = await self._aliases.get_alias(alias)
                if target != room_id:
                    raise MatrixError(
                        400, "M_BAD_ALIAS", f"Alias {alias} does not point to this room"
                    )

    def _redaction_check(
        self, room_id: str, sender: str, target_id: str, *, rate_limited: bool = False
    ) -> EventCheck:
        store = self._events
        rate_limits = self._rate_limits

        async def check(state: Mapping[StateKey, Event], rv: RoomVersion) -> None:
            found = await store.get_event(target_id)
            if found is None:
                raise MatrixError(404, "M_NOT_FOUND", "No such event in this room")
            if found.event.room_id != room_id:
                # A mistake, not a probe (event IDs are not guessable): 400, as Synapse.
                raise MatrixError(
                    400, "M_INVALID_PARAM", "The event to redact is in a different room"
                )
            if rate_limited:
                await rate_limits.check_redaction(sender, own=found.event.sender == sender)
            if found.event.sender == sender:
                return
            levels = PowerLevels.from_state(
                state.get(("m.room.create", "")), state.get(("m.room.power_levels", "")), rv
            )
            if user_power(state, sender) < levels.redact:
                raise forbidden("You don't have permission to redact other users' events")

        return check
