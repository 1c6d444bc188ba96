"""Server admins managing rooms: Synapse's room admin API rules (docs/admin_api/rooms.md,
room_membership.md), answered in Synapse's JSON shapes.

Deleting a room makes every local member leave (as themselves, so their clients see an
ordinary leave), removes the room's local aliases and its directory entry, optionally
blocks it (no local user may join it again) and, by default, purges it from the database.
`DELETE /v2/rooms` runs that as a background task whose status is kept in memory for a day
(as Synapse keeps it): a restart forgets the statuses, never the work already committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starling.errors import MatrixError, forbidden, invalid_param, not_found
from starling.rooms.client_format import redacted_pdu
from starling.rooms.creation import CreateRoomRequest, RoomCreator
from starling.rooms.event_service import RoomEventService
from starling.rooms.membership import MembershipService
from starling.storage.accounts import AccountStore, UserExists
from starling.storage.admin_rooms import AdminRoomStore, RoomSummary
from starling.storage.admin_tasks import AdminTaskStore
from starling.storage.aliases import AliasStore
from starling.storage.event_timestamps import EventTimestampStore
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore
from starling.sync.filtering import EventFilter
from starling.sync.history import BEGINNING
from starling.sync.tokens import HistoryPosition

logger = logging.getLogger(__name__)

STATUS_KEPT_SECONDS = 24 * 3600

# order_by -> (sort key, largest first when going forwards)
ROOM_ORDERS: dict[str, tuple[str, bool]] = {
    "name": ("name", False),
    "alphabetical": ("name", False),
    "canonical_alias": ("canonical_alias", False),
    "joined_members": ("joined_members", True),
    "size": ("joined_members", True),
    "joined_local_members": ("joined_local_members", True),
    "version": ("version", True),
    "creator": ("creator", False),
    "encryption": ("encryption", False),
    "federatable": ("federatable", True),
    "public": ("public", True),
    "join_rules": ("join_rules", False),
    "guest_access": ("guest_access", False),
    "history_visibility": ("history_visibility", False),
    "state_events": ("state_events", True),
}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def room_json(room: RoomSummary) -> dict[str, Any]:
    """A room as Synapse's room list shows it."""
    state = room.state
    create = state.get("m.room.create", {})
    return {
        "room_id": room.room_id,
        "name": _str_or_none(state.get("m.room.name", {}).get("name")),
        "canonical_alias": _str_or_none(state.get("m.room.canonical_alias", {}).get("alias")),
        "joined_members": room.joined_members,
        "joined_local_members": room.joined_local_members,
        "version": room.version,
        "creator": room.creator,
        "encryption": _str_or_none(state.get("m.room.encryption", {}).get("algorithm")),
        "federatable": create.get("m.federate", True) is not False,
        "public": room.public,
        "join_rules": _str_or_none(state.get("m.room.join_rules", {}).get("join_rule")),
        "guest_access": _str_or_none(state.get("m.room.guest_access", {}).get("guest_access")),
        "history_visibility": _str_or_none(
            state.get("m.room.history_visibility", {}).get("history_visibility")
        ),
        "state_events": room.state_events,
        "room_type": _str_or_none(create.get("type")),
    }


def _sort_key(value: Any) -> tuple[int, Any]:
    # None sorts after every value (Synapse's NULLS LAST on PostgreSQL), whatever the order.
    if value is None:
        return (1, "")
    if isinstance(value, bool):
        return (0, int(value))
    return (0, value)


@dataclass
class DeleteTask:
    delete_id: str
    room_id: str
    status: str = "scheduled"
    error: str | None = None
    kicked_users: list[str] = field(default_factory=list)
    failed_to_kick_users: list[str] = field(default_factory=list)
    local_aliases: list[str] = field(default_factory=list)
    new_room_id: str | None = None
    finished_at: float | None = None
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "delete_id": self.delete_id,
            "room_id": self.room_id,
            "status": self.status,
            "shutdown_room": {
                "kicked_users": self.kicked_users,
                "failed_to_kick_users": self.failed_to_kick_users,
                "local_aliases": self.local_aliases,
                "new_room_id": self.new_room_id,
            },
        }
        if self.error is not None:
            out["error"] = self.error
        return out


# Synapse's defaults for the room the members of a deleted room are moved to.
DEFAULT_NEW_ROOM_NAME = "Content Violation Notification"
DEFAULT_NEW_ROOM_MESSAGE = (
    "Sharing illegal content on this server is not permitted and rooms in violation will be "
    "blocked."
)


@dataclass(frozen=True)
class DeleteRequest:
    block: bool = False
    purge: bool = True
    force_purge: bool = False
    new_room_user_id: str | None = None
    """Set: that local user makes a new room, says `message` there, and every local
    member of the deleted room is moved into it (its local aliases too)."""
    room_name: str | None = None
    message: str | None = None


class AdminRooms:
    def __init__(
        self,
        *,
        server_name: str,
        store: AdminRoomStore,
        room_events: RoomEventService,
        events: EventStore,
        membership: MembershipService,
        memberships: MembershipStore,
        aliases: AliasStore,
        creator: RoomCreator,
        accounts: AccountStore,
        profiles: ProfileStore,
        timestamps: EventTimestampStore,
        task_statuses: AdminTaskStore | None = None,
    ) -> None:
        self._timestamps = timestamps
        # Deletions run here are in `_tasks`; every step is saved in `task_statuses`,
        # which any process reads (workers).
        self._task_statuses = task_statuses
        self._creator = creator
        self._accounts = accounts
        self._profiles = profiles
        self._server_name = server_name
        self.server_name = server_name
        self._store = store
        self._room_events = room_events
        self._events = events
        self._membership = membership
        self._memberships = memberships
        self._aliases = aliases
        self._tasks: dict[str, DeleteTask] = {}
        self._running: set[asyncio.Task[None]] = set()

    # -- reading

    async def list_rooms(
        self,
        *,
        start: int,
        limit: int,
        order_by: str,
        backwards: bool,
        search_term: str | None,
        public: bool | None,
        empty: bool | None,
    ) -> dict[str, Any]:
        if order_by not in ROOM_ORDERS:
            raise invalid_param(f"Unknown value for order_by: {order_by[:40]!r}")
        rooms = [room_json(r) for r in await self._store.summaries()]
        if search_term:
            needle = search_term.lower()
            rooms = [
                r
                for r in rooms
                if needle in (r["name"] or "").lower()
                or needle in (r["canonical_alias"] or "").split(":", 1)[0].lower()
                or search_term in r["room_id"]
            ]
        if public is not None:
            rooms = [r for r in rooms if r["public"] is public]
        if empty is not None:
            rooms = [r for r in rooms if (r["joined_members"] == 0) is empty]
        key, largest_first = ROOM_ORDERS[order_by]
        rooms.sort(key=lambda r: r["room_id"])
        present = [r for r in rooms if r[key] is not None]
        absent = [r for r in rooms if r[key] is None]
        present.sort(key=lambda r: _sort_key(r[key]), reverse=largest_first != backwards)
        rooms = present + absent
        page = rooms[start : start + limit]
        body: dict[str, Any] = {"rooms": page, "offset": start, "total_rooms": len(rooms)}
        if start + len(page) < len(rooms):
            body["next_batch"] = start + len(page)
        if start > 0:
            body["prev_batch"] = max(0, start - limit)
        return body

    async def _summary(self, room_id: str) -> RoomSummary:
        found = await self._store.summaries(room_id)
        if not found:
            raise not_found("Room not found")
        return found[0]

    async def details(self, room_id: str) -> dict[str, Any]:
        room = await self._summary(room_id)
        out = room_json(room)
        tombstone = room.state.get("m.room.tombstone")
        out.update(
            {
                "topic": _str_or_none(room.state.get("m.room.topic", {}).get("topic")),
                "avatar": _str_or_none(room.state.get("m.room.avatar", {}).get("url")),
                "joined_local_devices": None,
                "forgotten": False,
                "tombstoned": tombstone is not None,
                "replacement_room": _str_or_none((tombstone or {}).get("replacement_room")),
            }
        )
        return out

    async def members(self, room_id: str) -> list[str]:
        await self._summary(room_id)
        return sorted(await self._memberships.get_joined_users(room_id))

    async def state(self, room_id: str, event_type: str | None) -> list[dict[str, Any]]:
        await self._summary(room_id)
        events = await self._room_events.current_state_events(room_id)
        out = []
        for (etype, state_key), event in sorted(events.items()):
            if event_type is not None and etype != event_type:
                continue
            out.append(
                {
                    "type": etype,
                    "state_key": state_key,
                    "content": event.content,
                    "sender": event.sender,
                    "event_id": event.event_id,
                    "origin_server_ts": event.origin_server_ts,
                    "room_id": room_id,
                    "unsigned": {},
                }
            )
        return out

    async def messages(
        self,
        room_id: str,
        *,
        from_pos: HistoryPosition | None,
        from_token: str | None,
        to_pos: HistoryPosition | None,
        backwards: bool,
        limit: int,
        efilter: EventFilter,
    ) -> dict[str, Any]:
        """GET /_synapse/admin/v1/rooms/{roomId}/messages: /messages for an admin, who
        sees every timeline event whatever their membership and the room's history
        visibility (redacted events as redacted). One page read, then filtered: a page
        may hold fewer than `limit` events while `end` says there are more."""
        await self._summary(room_id)
        max_stream = self._room_events.current_position
        start = from_token or HistoryPosition(max_stream if backwards else BEGINNING).encode()
        body: dict[str, Any] = {"start": start, "chunk": []}
        if limit == 0:
            body["end"] = start
            return body

        def point(p: HistoryPosition | None) -> tuple[int | None, int] | None:
            return None if p is None else (p.depth, p.stream)

        rows = await self._events.get_room_history(
            room_id,
            after=point(to_pos if backwards else from_pos),
            not_after=point(from_pos if backwards else to_pos),
            max_stream=max_stream,
            limit=limit,
            backwards=backwards,
        )
        for event, meta in rows:
            if not efilter.matches(event.type, event.sender, event.room_id, event.content):
                continue
            pdu = redacted_pdu(event) if meta.redacted_by else None
            out: dict[str, Any] = {
                "type": event.type,
                "content": pdu["content"] if pdu is not None else event.content,
                "sender": event.sender,
                "event_id": event.event_id,
                "origin_server_ts": event.origin_server_ts,
                "room_id": event.room_id,
                "unsigned": {"redacted_because": meta.redacted_by} if meta.redacted_by else {},
            }
            if event.state_key is not None:
                out["state_key"] = event.state_key
            body["chunk"].append(out)
        if rows and len(rows) == limit:
            last_event, last_meta = rows[-1]
            stream = last_meta.stream_ordering or 0
            body["end"] = HistoryPosition(
                stream - 1 if backwards else stream, last_event.depth
            ).encode()
        return body

    async def timestamp_to_event(self, room_id: str, ts: int, forwards: bool) -> dict[str, Any]:
        """GET /_synapse/admin/v1/rooms/{roomId}/timestamp_to_event: the event closest to
        `ts` in that direction, from this server's copy only (as Synapse's admin API)."""
        await self._summary(room_id)
        found = await self._timestamps.closest_event(room_id, ts, forwards)
        if found is None:
            way = "forward" if forwards else "backward"
            raise not_found(f"Unable to find event from {ts} in {way} direction")
        return {"event_id": found[0], "origin_server_ts": found[1]}

    async def forward_extremities(self, room_id: str) -> list[dict[str, Any]]:
        await self._summary(room_id)
        return await self._store.forward_extremities(room_id)

    async def largest_rooms(self) -> list[dict[str, Any]]:
        """GET /_synapse/admin/v1/statistics/database/rooms: the ten largest rooms."""
        return [
            {"room_id": room_id, "estimated_size": size}
            for room_id, size in await self._store.largest_rooms(10)
        ]

    # -- blocking

    async def block_status(self, room_id: str) -> dict[str, Any]:
        by = await self._store.blocked_by(room_id)
        return {"block": False} if by is None else {"block": True, "user_id": by}

    async def set_blocked(self, admin_id: str, room_id: str, block: bool) -> None:
        if block:
            await self._store.block(room_id, admin_id)
        else:
            await self._store.unblock(room_id)

    async def is_blocked(self, room_id: str) -> bool:
        return await self._store.is_blocked(room_id)

    # -- membership on the admin's behalf

    async def resolve(self, room_id_or_alias: str) -> str:
        if room_id_or_alias.startswith("#"):
            room_id = await self._aliases.get_alias(room_id_or_alias)
            if room_id is None:
                raise not_found("Room alias not found")
            return room_id
        if not room_id_or_alias.startswith("!"):
            raise invalid_param(f"{room_id_or_alias[:80]!r} is not a room ID or alias")
        return room_id_or_alias

    async def join_user(self, admin_id: str, room_id_or_alias: str, user_id: str) -> str:
        """POST /_synapse/admin/v1/join/{roomIdOrAlias}: a local user joins; if the room
        needs an invite, the admin invites them first (so the admin must be in it)."""
        if not user_id.endswith(":" + self._server_name):
            raise invalid_param("This endpoint can only be used with local users")
        room_id = await self.resolve(room_id_or_alias)
        await self._summary(room_id)
        try:
            await self._membership.join(room_id, user_id)
        except MatrixError as e:
            if e.status != 403:
                raise
            admin_member = await self._memberships.get_membership(room_id, admin_id)
            if admin_member is None or admin_member.membership != "join":
                raise forbidden("The room needs an invite, and you are not in it") from None
            await self._membership.invite(room_id, admin_id, user_id)
            await self._membership.join(room_id, user_id)
        return room_id

    async def make_room_admin(self, room_id_or_alias: str, user_id: str) -> None:
        """POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin: the local member
        with the highest power level gives `user_id` that level (inviting them first when
        they are not in the room)."""
        if not user_id.endswith(":" + self._server_name):
            raise invalid_param("Only local users can be made room admins")
        room_id = await self.resolve(room_id_or_alias)
        await self._summary(room_id)
        state = await self._room_events.current_state_events(
            room_id, [("m.room.power_levels", ""), ("m.room.create", "")]
        )
        levels_event = state.get(("m.room.power_levels", ""))
        levels: dict[str, Any] = dict(levels_event.content) if levels_event is not None else {}
        users: dict[str, Any] = dict(levels.get("users") or {})
        create = state.get(("m.room.create", ""))
        creators: set[str] = set()
        version = await self._events.get_room_version(room_id)
        if create is not None and version is not None and version.privileged_creators:
            extra = create.content.get("additional_creators")
            creators = {create.sender, *(extra if isinstance(extra, list) else [])}

        def level(user: str) -> float:
            if user in creators:
                return float("inf")
            value = users.get(user, levels.get("users_default", 0))
            return float(value) if isinstance(value, int) else 0.0

        suffix = ":" + self._server_name
        joined = sorted(
            u for u in await self._memberships.get_joined_users(room_id) if u.endswith(suffix)
        )
        if not joined:
            raise invalid_param("No local member of the room can give admin rights")
        granter = max(joined, key=level)
        needed = (levels.get("events") or {}).get(
            "m.room.power_levels", levels.get("state_default", 50)
        )
        if levels_event is not None and level(granter) < (
            needed if isinstance(needed, int) else 50
        ):
            raise forbidden("No local member of the room can change power levels")
        if user_id in creators:
            return
        grant = 100 if level(granter) == float("inf") else int(level(granter))
        member = await self._memberships.get_membership(room_id, user_id)
        if member is None or member.membership not in ("join", "invite"):
            await self._membership.invite(room_id, granter, user_id)
        users[user_id] = max(grant, int(level(user_id)))
        levels["users"] = users
        await self._room_events.send(room_id, granter, "m.room.power_levels", levels, "")

    # -- deletion

    def _expire_statuses(self) -> None:
        now = time.monotonic()
        for delete_id, task in list(self._tasks.items()):
            if task.finished_at is not None and now - task.finished_at > STATUS_KEPT_SECONDS:
                del self._tasks[delete_id]

    async def start_delete(self, admin_id: str, room_id: str, req: DeleteRequest) -> str:
        """DELETE /_synapse/admin/v2/rooms/{roomId}: starts in the background."""
        self._expire_statuses()
        if not req.block:
            await self._summary(room_id)
        task = DeleteTask(secrets.token_urlsafe(12), room_id)
        self._tasks[task.delete_id] = task
        await self._save_delete(task)
        running = asyncio.create_task(self._run_delete(admin_id, task, req))
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return task.delete_id

    async def delete_now(self, admin_id: str, room_id: str, req: DeleteRequest) -> dict[str, Any]:
        """DELETE /_synapse/admin/v1/rooms/{roomId}: the same, answered when done."""
        if not req.block:
            await self._summary(room_id)
        task = DeleteTask(secrets.token_urlsafe(12), room_id)
        await self._run_delete(admin_id, task, req, save=False)
        if task.status == "failed":
            raise MatrixError(500, "M_UNKNOWN", task.error or "Room deletion failed")
        shutdown: dict[str, Any] = task.to_json()["shutdown_room"]
        return shutdown

    async def _run_delete(
        self, admin_id: str, task: DeleteTask, req: DeleteRequest, *, save: bool = True
    ) -> None:
        task.status = "active"
        task.updated_ms = int(time.time() * 1000)
        if save:
            await self._save_delete(task)
        try:
            await self._shut_down(admin_id, task, req)
            task.status = "complete"
        except Exception as e:
            logger.exception("deleting room %s failed", task.room_id)
            task.status = "failed"
            task.error = str(e) or type(e).__name__
        finally:
            task.finished_at = time.monotonic()
            task.updated_ms = int(time.time() * 1000)
            if save:
                await self._save_delete(task)

    async def _save_delete(self, task: DeleteTask) -> None:
        if self._task_statuses is None:
            return
        try:
            await self._task_statuses.save(
                task.delete_id,
                DELETE_ACTION,
                task.room_id,
                task.to_json(),
                _delete_entry(task),
                task.updated_ms,
            )
        except Exception:
            # The deletion goes on; only other processes' status queries miss this step.
            logger.exception("saving the status of room deletion %s failed", task.delete_id)

    async def _shut_down(self, admin_id: str, task: DeleteTask, req: DeleteRequest) -> None:
        room_id = task.room_id
        if req.block:
            await self._store.block(room_id, admin_id)
        known = bool(await self._store.summaries(room_id))
        if not known:
            return
        suffix = ":" + self._server_name
        if req.new_room_user_id is not None:
            task.new_room_id = await self._new_room(req)
        members = await self._memberships.get_members(room_id)
        for m in sorted(members, key=lambda m: m.user_id):
            if not m.user_id.endswith(suffix) or m.membership not in ("join", "invite", "knock"):
                continue
            try:
                await self._membership.leave(room_id, m.user_id)
                await self._membership.forget(room_id, m.user_id)
                task.kicked_users.append(m.user_id)
            except MatrixError as e:
                logger.warning("deleting %s: %s could not leave: %s", room_id, m.user_id, e)
                task.failed_to_kick_users.append(m.user_id)
                continue
            if task.new_room_id is not None and m.user_id != req.new_room_user_id:
                try:
                    await self._membership.join(task.new_room_id, m.user_id)
                except MatrixError as e:
                    logger.warning("deleting %s: %s not moved: %s", room_id, m.user_id, e)
        for alias in await self._aliases.aliases_for_room(room_id):
            if alias.endswith(suffix):
                creator = await self._aliases.get_alias_creator(alias)
                await self._aliases.delete_alias(alias)
                if task.new_room_id is not None:
                    await self._aliases.create_alias(
                        alias, task.new_room_id, creator or req.new_room_user_id or ""
                    )
                task.local_aliases.append(alias)
        if not req.purge:
            return
        if task.failed_to_kick_users and not req.force_purge:
            raise RuntimeError("Local users are still in the room; use force_purge to purge")
        await self._store.purge(room_id)

    async def scheduled_tasks(self) -> list[dict[str, Any]]:
        """The room deletions of the last day, as Synapse's scheduled tasks (the ones
        running here as they are now, the others as last saved)."""
        self._expire_statuses()
        out: dict[str, dict[str, Any]] = {}
        if self._task_statuses is not None:
            for entry in await self._task_statuses.tasks(DELETE_ACTION, _now_ms()):
                out[entry["id"]] = entry
        for t in self._tasks.values():
            out[t.delete_id] = _delete_entry(t)
        return list(out.values())

    async def _new_room(self, req: DeleteRequest) -> str:
        """Synapse's `new_room_user_id`: a public room made by that user (created if it
        does not exist yet), where members may read but not write, with the message."""
        user_id = req.new_room_user_id
        assert user_id is not None
        if not await self._accounts.user_exists(user_id):
            with contextlib.suppress(UserExists):
                await self._accounts.create_user(user_id, None)
                await self._profiles.create_profile(user_id, user_id[1:].split(":", 1)[0])
        new_room_id, _ = await self._creator.create(
            CreateRoomRequest(
                creator=user_id,
                preset="public_chat",
                name=req.room_name or DEFAULT_NEW_ROOM_NAME,
                power_level_content_override={"users_default": -10},
            )
        )
        body = req.message or DEFAULT_NEW_ROOM_MESSAGE
        await self._room_events.send(
            new_room_id, user_id, "m.room.message", {"msgtype": "m.text", "body": body}
        )
        return new_room_id

    async def delete_status(self, delete_id: str) -> dict[str, Any]:
        self._expire_statuses()
        task = self._tasks.get(delete_id)
        if task is not None:
            return task.to_json()
        if self._task_statuses is not None:
            found = await self._task_statuses.status(DELETE_ACTION, delete_id, _now_ms())
            if found is not None:
                return found
        raise not_found("delete id not found")

    async def delete_statuses(self, room_id: str) -> list[dict[str, Any]]:
        self._expire_statuses()
        found: dict[str, dict[str, Any]] = {}
        if self._task_statuses is not None:
            for status in await self._task_statuses.statuses_of(DELETE_ACTION, room_id, _now_ms()):
                found[status["delete_id"]] = status
        for t in self._tasks.values():
            if t.room_id == room_id:
                found[t.delete_id] = t.to_json()
        if not found:
            raise not_found("No delete task for room")
        return list(found.values())


DELETE_ACTION = "shutdown_and_purge_room"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _delete_entry(t: DeleteTask) -> dict[str, Any]:
    return {
        "id": t.delete_id,
        "action": DELETE_ACTION,
        "status": t.status,
        "timestamp_ms": t.updated_ms,
        "resource_id": t.room_id,
        "result": t.to_json()["shutdown_room"],
        "error": t.error,
    }
