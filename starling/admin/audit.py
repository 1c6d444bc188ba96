"""The admin audit log: every change made through the admin API (any method but GET) is
recorded with the admin, the method and path, the user, room or media it was on, the time
and the outcome, refused attempts included. Bodies are never recorded (they hold
passwords). Admins read it with ``GET /_synapse/admin/v1/audit_log`` (Starling's own).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starling.storage.audit_log import AuditLogStore

logger = logging.getLogger(__name__)

MAX_PATH_LENGTH = 1000


class AuditLog:
    def __init__(self, store: AuditLogStore) -> None:
        self._store = store

    async def record(
        self, admin: str, method: str, path: str, target: str | None, status: int
    ) -> None:
        """Never raises: a failed write is logged, the admin's action stands."""
        try:
            await self._store.add(
                int(time.time() * 1000), admin, method, path[:MAX_PATH_LENGTH], target, status
            )
        except Exception:
            logger.exception("audit log: could not record %s %s by %s", method, path, admin)

    async def list(
        self, start: int, limit: int, admin: str | None, target: str | None
    ) -> dict[str, Any]:
        entries, total = await self._store.list(start, limit, admin, target)
        body: dict[str, Any] = {
            "entries": [
                {
                    "id": e.id,
                    "ts": e.ts,
                    "admin": e.admin,
                    "method": e.method,
                    "path": e.path,
                    "target": e.target,
                    "status": e.status,
                }
                for e in entries
            ],
            "total": total,
        }
        if start + len(entries) < total:
            body["next_token"] = start + len(entries)
        return body
