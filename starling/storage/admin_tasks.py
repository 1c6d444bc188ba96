"""Statuses of the admin API's background tasks (room deletions, history purges, user
redactions), written by the process that runs a task at each step, read by any process:
with workers a status query may reach another process than the one running the task.
Kept a day (STATUS_KEPT_MS), as Synapse keeps its scheduled tasks."""

from __future__ import annotations

from typing import Any

import orjson

from starling.storage.database import Database

STATUS_KEPT_MS = 24 * 3600 * 1000


class AdminTaskStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save(
        self,
        task_id: str,
        action: str,
        resource_id: str,
        status: dict[str, Any],
        task: dict[str, Any],
        updated_ms: int,
    ) -> None:
        """Record a task's state: `status` is what its status query answers, `task` its
        entry in GET /scheduled_tasks. Statuses older than a day go at the same time."""
        async with self._db.transaction() as txn:
            await txn.execute(
                "INSERT INTO admin_task_statuses"
                " (task_id, action, resource_id, status_json, task_json, updated_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET"
                " status_json = excluded.status_json, task_json = excluded.task_json,"
                " updated_ms = excluded.updated_ms",
                task_id,
                action,
                resource_id,
                orjson.dumps(status).decode(),
                orjson.dumps(task).decode(),
                updated_ms,
            )
            await txn.execute(
                "DELETE FROM admin_task_statuses WHERE updated_ms < ?",
                updated_ms - STATUS_KEPT_MS,
            )

    async def status(self, action: str, task_id: str, now_ms: int) -> dict[str, Any] | None:
        row = await self._db.fetch_one(
            "SELECT status_json FROM admin_task_statuses"
            " WHERE task_id = ? AND action = ? AND updated_ms >= ?",
            task_id,
            action,
            now_ms - STATUS_KEPT_MS,
        )
        return None if row is None else dict(orjson.loads(row[0]))

    async def statuses_of(self, action: str, resource_id: str, now_ms: int) -> list[dict[str, Any]]:
        rows = await self._db.fetch_all(
            "SELECT status_json FROM admin_task_statuses"
            " WHERE action = ? AND resource_id = ? AND updated_ms >= ? ORDER BY updated_ms",
            action,
            resource_id,
            now_ms - STATUS_KEPT_MS,
        )
        return [dict(orjson.loads(r[0])) for r in rows]

    async def tasks(self, action: str, now_ms: int) -> list[dict[str, Any]]:
        """The `action` tasks of the last day, as GET /scheduled_tasks lists them."""
        rows = await self._db.fetch_all(
            "SELECT task_json FROM admin_task_statuses WHERE action = ? AND updated_ms >= ?",
            action,
            now_ms - STATUS_KEPT_MS,
        )
        return [dict(orjson.loads(r[0])) for r in rows]
