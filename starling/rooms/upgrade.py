"""Room upgrades: replace a room by a new one of another room version.

Spec: client-server-api modules/room_upgrades.md ("Server behaviour"). The new room's
create event names its predecessor; the state that defines the room (names, topic, join
rules, power levels, encryption, bans...) is copied; local aliases move; the old room gets
an m.room.tombstone pointing at the new one and its power levels are raised so that
ordinary members can no longer talk there. Synapse's choices fill the gaps (which state is
copied, how the old room is restricted).
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starling.errors import MatrixError, forbidden
from starling.protocol.event import Event, StateKey
from starling.protocol.power_levels import PowerLevels
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from starling.rooms.event_service import RoomEventService, user_power
from starling.storage.aliases import AliasStore
from starling.storage.events import EventStore

# State carried over to the new room, as Synapse does.
COPIED_STATE = (
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.pinned_events",
)

Publisher = Callable[[str, bool], Awaitable[None]]
IsPublic = Callable[[str], Awaitable[bool]]
# (old room, new room, local users): copies each user's own state about the room
# (starling.push.upgrade.UpgradeUserState).
UserStateCopier = Callable[[str, str, list[str]], Awaitable[None]]


class RoomUpgrader:
    def __init__(
        self,
        server_name: str,
        events: RoomEventService,
        event_store: EventStore,
        aliases: AliasStore,
        is_public: IsPublic | None = None,
        publish: Publisher | None = None,
        copy_user_state: UserStateCopier | None = None,
        joined_users: Callable[[str], Awaitable[frozenset[str]]] | None = None,
    ) -> None:
        self._copy_user_state = copy_user_state
        self._joined_users = joined_users
        self._server_name = server_name
        self._events = events
        self._store = event_store
        self._aliases = aliases
        self._is_public = is_public
        self._publish = publish

    async def upgrade(self, old_room_id: str, user_id: str, new_version_id: str) -> str:
        """Upgrade; returns the replacement room's ID."""
        if new_version_id not in KNOWN_ROOM_VERSIONS:
            raise MatrixError(
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
                f"Room version {new_version_id!r} is not supported",
            )
        new_rv = get_room_version(new_version_id)
        state = await self._events.current_state_events(old_room_id)
        create = state.get(("m.room.create", ""))
        if create is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {old_room_id}")
        old_rv = create.room_version
        member = state.get(("m.room.member", user_id))
        if member is None or member.membership != "join":
            raise forbidden("You are not in this room")
        levels = PowerLevels.from_state(create, state.get(("m.room.power_levels", "")), old_rv)
        if user_power(state, user_id) < levels.event_level("m.room.tombstone", True):
            raise forbidden("You don't have permission to upgrade this room")

        creation: dict[str, Any] = {"room_version": new_rv.identifier}
        for key in ("type", "m.federate"):
            if key in create.content:
                creation[key] = copy.deepcopy(create.content[key])
        if new_rv.create_event_has_creator:
            creation["creator"] = user_id
        tombstone = {"body": "This room has been replaced"}
        if new_rv.room_id_from_create_event:
            # The new room's ID is its create event's hash, so the create event cannot name
            # the tombstone that names the room: it points at the old room's last event
            # (the field is deprecated and optional since v1.16).
            extremities = await self._store.get_forward_extremities(old_room_id)
            predecessor: dict[str, Any] = {"room_id": old_room_id}
            if extremities:
                predecessor["event_id"] = sorted(extremities)[0]
            new_room_id = await self._build_new_room(
                None, {**creation, "predecessor": predecessor}, state, member, user_id
            )
            await self._events.send(
                old_room_id,
                user_id,
                "m.room.tombstone",
                {**tombstone, "replacement_room": new_room_id},
                "",
            )
        else:
            # As Synapse: the tombstone is built and authorised first, the new room is made
            # with `predecessor.event_id` = the tombstone (the old room's last event), then
            # the tombstone is stored — a refused tombstone creates no room.
            new_room_id = f"!{secrets.token_urlsafe(18)}:{self._server_name}"

            async def build(tomb: Event) -> None:
                predecessor = {"room_id": old_room_id, "event_id": tomb.event_id}
                creation["predecessor"] = predecessor
                await self._build_new_room(new_room_id, creation, state, member, user_id)

            await self._events.send(
                old_room_id,
                user_id,
                "m.room.tombstone",
                {**tombstone, "replacement_room": new_room_id},
                "",
                before_persist=build,
            )
        await self._move_aliases(state, old_room_id, new_room_id, user_id)
        await self._restrict_old_room(state, old_room_id, user_id)
        if self._copy_user_state is not None and self._joined_users is not None:
            members = await self._joined_users(old_room_id)
            local = sorted(u for u in members if u.partition(":")[2] == self._server_name)
            await self._copy_user_state(old_room_id, new_room_id, local)
        if self._is_public is not None and self._publish is not None:
            if await self._is_public(old_room_id):
                await self._publish(new_room_id, True)
                await self._publish(old_room_id, False)
        return new_room_id

    async def transfer_after_join(self, room_id: str) -> None:
        """A user of this server joined `room_id` through another server: if the room
        replaces one this server knows, do here what the upgrading server did there
        (Synapse's transfer_room_state_on_room_upgrade): local aliases and the directory
        entry move to the new room, and local members' own state follows it."""
        state = await self._events.current_state_events(room_id, [("m.room.create", "")])
        create = state.get(("m.room.create", ""))
        predecessor = create.content.get("predecessor") if create is not None else None
        old_room_id = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if not isinstance(old_room_id, str) or old_room_id == room_id:
            return
        old_state = await self._events.current_state_events(old_room_id)
        if not old_state:
            return
        for alias in await self._aliases.aliases_for_room(old_room_id):
            creator = await self._aliases.get_alias_creator(alias)
            await self._aliases.delete_alias(alias)
            await self._aliases.create_alias(alias, room_id, creator or "")
        if self._is_public is not None and self._publish is not None:
            if await self._is_public(old_room_id):
                await self._publish(room_id, True)
                await self._publish(old_room_id, False)
        if self._copy_user_state is not None and self._joined_users is not None:
            members = await self._joined_users(old_room_id)
            local = sorted(u for u in members if u.partition(":")[2] == self._server_name)
            await self._copy_user_state(old_room_id, room_id, local)

    async def _build_new_room(
        self,
        room_id: str | None,
        creation: dict[str, Any],
        state: dict[StateKey, Event],
        member: Event,
        user_id: str,
    ) -> str:
        """Create the replacement room with the old room's defining state; returns its ID."""
        rv = get_room_version(creation["room_version"])
        create = await self._events.create_room_event(rv, room_id, user_id, creation)
        new_room_id = create.room_id
        send = self._events.send
        profile: dict[str, Any] = {
            k: member.content[k] for k in ("displayname", "avatar_url") if k in member.content
        }
        await send(
            new_room_id, user_id, "m.room.member", {"membership": "join", **profile}, user_id
        )
        await send(
            new_room_id,
            user_id,
            "m.room.power_levels",
            self._new_power_levels(state, user_id, rv.privileged_creators),
            "",
        )
        for etype in COPIED_STATE:
            ev = state.get((etype, ""))
            if ev is not None and ev.content:
                await send(new_room_id, user_id, etype, copy.deepcopy(ev.content), "")
            elif etype == "m.room.guest_access":
                # Absent means forbidden; the new room says so explicitly (Synapse would
                # apply its private_chat default, can_join, letting guests in).
                await send(new_room_id, user_id, etype, {"guest_access": "forbidden"}, "")
        for (etype, target), ev in state.items():
            if etype == "m.room.member" and ev.membership == "ban":
                await send(
                    new_room_id,
                    user_id,
                    "m.room.member",
                    {"membership": "ban", **_reason(ev)},
                    target,
                )
        return new_room_id

    def _new_power_levels(
        self, state: dict[StateKey, Event], user_id: str, privileged_creators: bool
    ) -> dict[str, Any]:
        pl_event = state.get(("m.room.power_levels", ""))
        content = copy.deepcopy(pl_event.content) if pl_event is not None else {}
        users = content.get("users")
        users = dict(users) if isinstance(users, dict) else {}
        if privileged_creators:
            users.pop(user_id, None)  # creators are not listed in room version 12
        else:
            users[user_id] = max(100, _int(users.get(user_id), 0))
        content["users"] = users
        if privileged_creators:
            events = content.get("events")
            events = dict(events) if isinstance(events, dict) else {}
            events["m.room.tombstone"] = max(150, _int(events.get("m.room.tombstone"), 0))
            content["events"] = events
        return content

    async def _move_aliases(
        self, state: dict[StateKey, Event], old_room_id: str, new_room_id: str, user_id: str
    ) -> None:
        local = await self._aliases.aliases_for_room(old_room_id)
        for alias in local:
            creator = await self._aliases.get_alias_creator(alias)
            await self._aliases.delete_alias(alias)
            await self._aliases.create_alias(alias, new_room_id, creator or user_id)
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is not None and canonical.content:
            await self._events.send(
                new_room_id, user_id, "m.room.canonical_alias", copy.deepcopy(canonical.content), ""
            )
            # The upgrader may not be allowed to clear it; the tombstone suffices.
            with contextlib.suppress(MatrixError):
                await self._events.send(old_room_id, user_id, "m.room.canonical_alias", {}, "")

    async def _restrict_old_room(
        self, state: dict[StateKey, Event], room_id: str, user_id: str
    ) -> None:
        pl_event = state.get(("m.room.power_levels", ""))
        content = copy.deepcopy(pl_event.content) if pl_event is not None else {}
        restricted = max(50, _int(content.get("users_default"), 0) + 1)
        changed = False
        for key in ("events_default", "invite"):
            if _int(content.get(key), 0) < restricted:
                content[key] = restricted
                changed = True
        if changed:
            # The upgrader may lack the power to change levels; the room is still tombstoned.
            with contextlib.suppress(MatrixError):
                await self._events.send(room_id, user_id, "m.room.power_levels", content, "")


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _reason(ev: Event) -> dict[str, Any]:
    reason = ev.content.get("reason")
    return {"reason": reason} if isinstance(reason, str) else {}
