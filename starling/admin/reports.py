"""Reporting content (spec: Client-Server API > Reporting content) and the admins' view of
the reports (Synapse: docs/admin_api/event_reports.md).

An event can be reported only by a member joined to its room, and only an event of that
room that exists here; otherwise 404 M_NOT_FOUND, the spec's one answer, so a report
cannot probe for events. A room can be reported by anyone if the room is known here.
"""

from __future__ import annotations

from typing import Any

import orjson

from starling.errors import not_found
from starling.storage.admin_rooms import AdminRoomStore
from starling.storage.events import EventStore
from starling.storage.memberships import MembershipStore
from starling.storage.reports import Report, ReportStore

MAX_REASON_LENGTH = 1000


class ContentReports:
    def __init__(
        self,
        *,
        store: ReportStore,
        events: EventStore,
        memberships: MembershipStore,
        rooms: AdminRoomStore,
    ) -> None:
        self._store = store
        self._events = events
        self._memberships = memberships
        self._rooms = rooms

    # -- users reporting

    async def report_event(
        self, user_id: str, room_id: str, event_id: str, reason: str | None, score: int | None
    ) -> None:
        member = await self._memberships.get_membership(room_id, user_id)
        stored = await self._events.get_event(event_id)
        if (
            member is None
            or member.membership != "join"
            or stored is None
            or stored.event.room_id != room_id
        ):
            raise not_found(
                "Unable to report event: it does not exist or you aren't able to see it."
            )
        await self._store.add(room_id, event_id, user_id, reason, score)

    async def report_room(self, user_id: str, room_id: str, reason: str) -> None:
        if await self._events.get_room_version(room_id) is None:
            raise not_found("The room was not found.")
        await self._store.add(room_id, None, user_id, reason, None)

    # -- admins reading

    async def _room_fields(self, room_id: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
        if room_id not in cache:
            found = await self._rooms.summaries(room_id)
            state = found[0].state if found else {}
            name = state.get("m.room.name", {}).get("name")
            alias = state.get("m.room.canonical_alias", {}).get("alias")
            cache[room_id] = {
                "name": name if isinstance(name, str) else None,
                "canonical_alias": alias if isinstance(alias, str) else None,
            }
        return cache[room_id]

    async def _json(self, report: Report, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": report.id,
            "received_ts": report.received_ts,
            "room_id": report.room_id,
            "event_id": report.event_id,
            "user_id": report.user_id,
            "reason": report.reason,
            "score": report.score,
            "sender": report.sender,
            **await self._room_fields(report.room_id, cache),
        }

    async def list(
        self,
        *,
        start: int,
        limit: int,
        newest_first: bool,
        user_id: str | None,
        room_id: str | None,
        sender: str | None,
    ) -> dict[str, Any]:
        reports, total = await self._store.list(
            start=start,
            limit=limit,
            newest_first=newest_first,
            user_id=user_id,
            room_id=room_id,
            sender=sender,
        )
        cache: dict[str, dict[str, Any]] = {}
        body: dict[str, Any] = {
            "event_reports": [await self._json(r, cache) for r in reports],
            "total": total,
        }
        if start + len(reports) < total:
            body["next_token"] = start + len(reports)
        return body

    async def get(self, report_id: int) -> dict[str, Any]:
        report = await self._store.get(report_id)
        if report is None:
            raise not_found("Event report not found")
        out = await self._json(report, {})
        out["event_json"] = orjson.loads(report.event_json) if report.event_json else None
        return out

    async def delete(self, report_id: int) -> None:
        if not await self._store.delete(report_id):
            raise not_found("Event report not found")

    async def count(self) -> int:
        return await self._store.count()
