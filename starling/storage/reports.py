"""Content reports: what users reported (an event, or with no event a whole room), for
admins to read and delete. One row per report in ``event_reports``."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from starling.storage.database import Database, Row


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    id: int
    received_ts: int
    room_id: str
    event_id: str | None
    user_id: str
    reason: str | None
    score: int | None
    sender: str | None
    """The reported event's sender (None for a room report or an event since purged)."""
    event_json: str | None


_COLUMNS = (
    "r.id, r.received_ts, r.room_id, r.event_id, r.user_id, r.reason, r.score, e.sender, e.json"
)
_FROM = "FROM event_reports AS r LEFT JOIN events AS e ON e.event_id = r.event_id"


def _report(row: Row) -> Report:
    return Report(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])


class ReportStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        room_id: str,
        event_id: str | None,
        user_id: str,
        reason: str | None,
        score: int | None,
    ) -> None:
        await self._db.execute(
            "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, score)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            int(time.time() * 1000),
            room_id,
            event_id,
            user_id,
            reason,
            score,
        )

    async def list(
        self,
        *,
        start: int,
        limit: int,
        newest_first: bool,
        user_id: str | None,
        room_id: str | None,
        sender: str | None,
    ) -> tuple[list[Report], int]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("r.user_id", user_id), ("r.room_id", room_id), ("e.sender", sender)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        total = await self._db.fetch_val(f"SELECT COUNT(*) {_FROM} {where}", *args)
        order = "DESC" if newest_first else "ASC"
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} {_FROM} {where} ORDER BY r.received_ts {order}, r.id {order}"
            " LIMIT ? OFFSET ?",
            *args,
            limit,
            start,
        )
        return [_report(r) for r in rows], int(total or 0)

    async def get(self, report_id: int) -> Report | None:
        row = await self._db.fetch_one(f"SELECT {_COLUMNS} {_FROM} WHERE r.id = ?", report_id)
        return None if row is None else _report(row)

    async def delete(self, report_id: int) -> bool:
        return bool(await self._db.execute("DELETE FROM event_reports WHERE id = ?", report_id))

    async def count(self) -> int:
        return int(await self._db.fetch_val("SELECT COUNT(*) FROM event_reports") or 0)
