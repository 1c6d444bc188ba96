"""Reporting content (spec: Client-Server API > Reporting content)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from starling.admin.reports import MAX_REASON_LENGTH, ContentReports
from starling.api.http import json_response, read_json_object
from starling.api.routing import requester_of
from starling.errors import bad_json, invalid_param, missing_param


def _reason(body: dict[str, Any], *, required: bool) -> str | None:
    reason = body.get("reason")
    if reason is None:
        if required:
            raise missing_param("Missing 'reason'")
        return None
    if not isinstance(reason, str):
        raise bad_json("'reason' must be a string")
    if len(reason) > MAX_REASON_LENGTH:
        raise invalid_param(f"'reason' must be at most {MAX_REASON_LENGTH} characters")
    return reason


class ReportRoutes:
    def __init__(self, reports: ContentReports) -> None:
        self._reports = reports

    async def report_event(self, request: web.Request) -> web.Response:
        """POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
        (spec: client-server-api/#post_matrixclientv3roomsroomidreporteventid)"""
        body = await read_json_object(request)
        score = body.get("score")  # removed in v1.18; still sent by older clients
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 0
        ):
            raise invalid_param("'score' must be an integer from -100 to 0")
        await self._reports.report_event(
            requester_of(request).user_id,
            request.match_info["roomId"],
            request.match_info["eventId"],
            _reason(body, required=False),
            score,
        )
        return json_response({})

    async def report_room(self, request: web.Request) -> web.Response:
        """POST /_matrix/client/v3/rooms/{roomId}/report
        (spec: client-server-api/#post_matrixclientv3roomsroomidreport)"""
        body = await read_json_object(request)
        reason = _reason(body, required=True)
        assert reason is not None
        await self._reports.report_room(
            requester_of(request).user_id, request.match_info["roomId"], reason
        )
        return json_response({})
