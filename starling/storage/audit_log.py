"""The admin audit log: one row per change an admin made through the admin API."""

from __future__ import annotations

import dataclasses
from typing import Any

from starling.storage.database import Database


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: int
    admin: str
    method: str
    path: str
    target: str | None
    status: int


class AuditLogStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, ts: int, admin: str, method: str, path: str, target: str | None, status: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO admin_audit_log (ts, admin, method, path, target, status)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            ts,
            admin,
            method,
            path,
            target,
            status,
        )

    async def list(
        self, start: int, limit: int, admin: str | None, target: str | None
    ) -> tuple[list[AuditEntry], int]:
        """Newest first."""
        clauses: list[str] = []
        args: list[Any] = []
        if admin is not None:
            clauses.append("admin = ?")
            args.append(admin)
        if target is not None:
            clauses.append("target = ?")
            args.append(target)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = await self._db.fetch_val(f"SELECT COUNT(*) FROM admin_audit_log {where}", *args)
        rows = await self._db.fetch_all(
            "SELECT id, ts, admin, method, path, target, status FROM admin_audit_log"
            f" {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            *args,
            limit,
            start,
        )
        return [AuditEntry(*r) for r in rows], int(total or 0)
