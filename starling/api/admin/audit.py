"""Admin API: the audit log (Starling's own addition beside Synapse's admin API) and the
wrapper that records every admin change into it."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from aiohttp import web

from starling.admin.audit import AuditLog
from starling.api.client.common import query_int
from starling.api.http import Handler, json_response
from starling.api.routing import Auth, Route, get, optional_requester
from starling.errors import MatrixError

MAX_LIMIT = 1000
# Path parameters naming what an action is on, most specific first.
_TARGETS = ("userId", "roomId", "roomIdOrAlias", "mediaId", "token", "destination", "reportId")


def _target(request: web.Request) -> str | None:
    info = request.match_info
    if "mediaId" in info and "serverName" in info:
        return f"mxc://{info['serverName']}/{info['mediaId']}"
    for name in _TARGETS:
        if name in info:
            return info[name]
    return None


def audited(handler: Handler, log: AuditLog) -> Handler:
    """`handler`, recording every call but GETs with its outcome."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except MatrixError as e:
            status = e.status
            raise
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            requester = optional_requester(request)
            if request.method != "GET" and requester is not None:
                await log.record(
                    requester.user_id, request.method, request.path, _target(request), status
                )

    return wrapper


def with_audit(routes: Sequence[Route], log: AuditLog) -> list[Route]:
    """The admin-authenticated routes wrapped by `audited`; others as they are."""
    return [
        Route(
            r.method,
            r.path,
            audited(r.handler, log),
            r.auth,
            r.guests,
            r.versions,
            r.rate_limit,
        )
        if r.auth is Auth.ADMIN
        else r
        for r in routes
    ]


class AdminAuditRoutes:
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    async def list_entries(self, request: web.Request) -> web.Response:
        """GET /_synapse/admin/v1/audit_log?from=&limit=&admin=&target=
        (Synapse admin API: none; Starling's own, docs/admin.md#audit-log)"""
        return json_response(
            await self._log.list(
                query_int(request, "from", 0),
                query_int(request, "limit", 100, maximum=MAX_LIMIT),
                request.query.get("admin"),
                request.query.get("target"),
            )
        )

    def routes(self) -> list[Route]:
        return [get("/audit_log", self.list_entries, Auth.ADMIN)]
