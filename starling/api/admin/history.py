"""Admin API: purging a room's history and redacting a user's events, on Synapse's paths
(docs/admin_api/purge_history_api.md, user_admin_api.md#redact-events-of-a-user).
Handlers parse and check; `AdminHistory` holds the rules."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.admin.history import AdminHistory, RedactRequest
from starling.admin.rooms import AdminRooms
from starling.api.admin.common import body_bool
from starling.api.client.common import query_int
from starling.api.http import json_response, read_json_object
from starling.api.routing import Auth, Route, get, post, requester_of
from starling.errors import MatrixError, bad_json, invalid_param
from starling.protocol.identifiers import is_valid_user_id

MAX_REDACT_ROOMS = 1000
MAX_REDACT_LIMIT = 10_000
MAX_REASON = 1000


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise invalid_param(f"{key} must be an int")
    return value


TASK_STATUSES = ("scheduled", "active", "complete", "cancelled", "failed")


class AdminHistoryRoutes:
    def __init__(self, history: AdminHistory, rooms: AdminRooms) -> None:
        self._history = history
        self._rooms = rooms

    async def scheduled_tasks(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/scheduled_tasks
        (Synapse admin API: docs/admin_api/scheduled_tasks.md): room deletions, history
        purges and redactions of the last day, whichever process runs them."""
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in TASK_STATUSES:
            raise invalid_param(f"status must be one of {', '.join(TASK_STATUSES)}")
        max_ts = query_int(request, "max_timestamp", 2**62, maximum=2**62)
        tasks = [
            t
            for t in [
                *await self._rooms.scheduled_tasks(),
                *await self._history.scheduled_tasks(),
            ]
            if (not q.get("action_name") or t["action"] == q["action_name"])
            and (not q.get("resource_id") or t["resource_id"] == q["resource_id"])
            and (status is None or t["status"] == status)
            and t["timestamp_ms"] < max_ts
        ]
        tasks.sort(key=lambda t: (t["timestamp_ms"], t["id"]))
        return json_response({"scheduled_tasks": tasks})

    async def purge_history(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]
        (Synapse admin API: docs/admin_api/purge_history_api.md)"""
        room_id = request.match_info["roomId"]
        if not room_id.startswith("!"):
            raise invalid_param("Not a room ID")
        body = await read_json_object(request)
        event_id = request.match_info.get("eventId") or body.get("purge_up_to_event_id")
        if event_id is not None and not isinstance(event_id, str):
            raise bad_json("'purge_up_to_event_id' must be a string")
        before_ts = None
        if event_id is None:
            before_ts = _int_field(body, "purge_up_to_ts")
        delete_local = body_bool(body, "delete_local_events")
        purge_id = await self._history.start_purge(
            room_id,
            event_id=event_id,
            before_ts=before_ts,
            delete_local_events=bool(delete_local),
        )
        return json_response({"purge_id": purge_id})

    async def purge_status(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/purge_history_status/{purgeId}
        (Synapse admin API: docs/admin_api/purge_history_api.md#purge-status-query)"""
        return json_response(await self._history.purge_status(request.match_info["purgeId"]))

    async def redact_user(self, request: web.Request) -> web.Response:
        """POST /_synapse/admin/v1/user/{userId}/redact
        (Synapse admin API: docs/admin_api/user_admin_api.md#redact-events-of-a-user)"""
        user_id = request.match_info["userId"]
        if not is_valid_user_id(user_id):
            raise invalid_param("Not a user ID")
        body = await read_json_object(request)
        rooms = body.get("rooms")
        if rooms is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Must provide a value for rooms.")
        if (
            not isinstance(rooms, list)
            or len(rooms) > MAX_REDACT_ROOMS
            or not all(isinstance(r, str) and r.startswith("!") and len(r) <= 255 for r in rooms)
        ):
            raise bad_json(f"'rooms' must be a list of at most {MAX_REDACT_ROOMS} room IDs")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise bad_json("If a reason is provided it must be a string (at most 1000 characters).")
        limit = _int_field(body, "limit")
        if limit is not None and not 0 < limit <= MAX_REDACT_LIMIT:
            raise invalid_param(f"If limit is provided it must be from 1 to {MAX_REDACT_LIMIT}.")
        req = RedactRequest(
            rooms=sorted(set(rooms)),
            reason=reason,
            limit=limit or 1000,
            use_admin=bool(body_bool(body, "use_admin")),
            after_ts=_int_field(body, "after_ts"),
            before_ts=_int_field(body, "before_ts"),
        )
        redact_id = await self._history.start_redact(requester_of(request).user_id, user_id, req)
        return json_response({"redact_id": redact_id})

    async def redact_status(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/user/redact_status/{redactId}
        (Synapse admin API: docs/admin_api/user_admin_api.md#check-the-status-of-a-redaction-process)"""
        return json_response(await self._history.redact_status(request.match_info["redactId"]))

    def routes(self) -> list[Route]:
        return [
            post("/purge_history/{roomId}", self.purge_history, Auth.ADMIN),
            post("/purge_history/{roomId}/{eventId}", self.purge_history, Auth.ADMIN),
            get("/purge_history_status/{purgeId}", self.purge_status, Auth.ADMIN),
            post("/user/{userId}/redact", self.redact_user, Auth.ADMIN),
            get("/user/redact_status/{redactId}", self.redact_status, Auth.ADMIN),
            get("/scheduled_tasks", self.scheduled_tasks, Auth.ADMIN),
        ]
