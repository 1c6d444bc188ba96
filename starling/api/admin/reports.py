"""Admin API: content reports (Synapse: docs/admin_api/event_reports.md)."""

from __future__ import annotations

from aiohttp import web

from starling.admin.reports import ContentReports
from starling.api.admin.common import backwards
from starling.api.client.common import query_int
from starling.api.http import json_response
from starling.api.routing import Auth, Route, delete, get
from starling.errors import invalid_param

MAX_LIMIT = 1000


def _report_id(request: web.Request) -> int:
    raw = request.match_info["reportId"]
    if not raw.isdigit() or len(raw) > 18:
        raise invalid_param("The report ID must be a non-negative integer")
    return int(raw)


class AdminReportRoutes:
    def __init__(self, reports: ContentReports) -> None:
        self._reports = reports

    async def list_reports(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/event_reports
        (Synapse admin API: docs/admin_api/event_reports.md#show-reported-events)"""
        newest_first = backwards(request) if "dir" in request.query else True
        return json_response(
            await self._reports.list(
                start=query_int(request, "from", 0),
                limit=query_int(request, "limit", 100, maximum=MAX_LIMIT),
                newest_first=newest_first,
                user_id=request.query.get("user_id"),
                room_id=request.query.get("room_id"),
                sender=request.query.get("event_sender_user_id"),
            )
        )

    async def get_report(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/event_reports/{reportId}
        (Synapse admin API: docs/admin_api/event_reports.md#show-details-of-a-specific-event-report)"""
        return json_response(await self._reports.get(_report_id(request)))

    async def delete_report(self, request: web.Request) -> web.Response:
        """DELETE /_synapse/admin/v1/event_reports/{reportId}
        (Synapse admin API: docs/admin_api/event_reports.md#delete-a-specific-event-report)"""
        await self._reports.delete(_report_id(request))
        return json_response({})

    def routes(self) -> list[Route]:
        return [
            get("/event_reports", self.list_reports, Auth.ADMIN),
            get("/event_reports/{reportId}", self.get_report, Auth.ADMIN),
            delete("/event_reports/{reportId}", self.delete_report, Auth.ADMIN),
        ]
