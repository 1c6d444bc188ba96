"""Server admins and room history: purging a room's old events, redacting a user's events,
and message retention policies (Synapse: docs/admin_api/purge_history_api.md,
user_admin_api.md "Redact events of a user", docs/message_retention_policies.md).

- A purge takes the room's events before a cut-off event (or before a time) out of its
  timelines: it deletes them, but never its state events and, unless asked, never this
  server's users' events, which become outliers instead (HistoryStore says what goes). It runs in the background, one per room at a time, in batches that each
  hold the room's write lock, so the room stays usable.
- Redacting a user's events sends one ordinary redaction per event through the client
  rules (ClientEvents.redact): as the user themselves when they are local (Synapse
  "puppets" them), as the admin otherwise or with `use_admin`, so the room's power
  levels decide, as for any client.
- Retention: a room's `m.room.retention` `max_lifetime` (or the server's default policy),
  kept within `allowed_lifetime_min`/`_max`, says how long its messages live; the purge
  jobs delete older history, local events included (as Synapse). Expired events are
  served until the next job runs.

Task statuses are kept for a day, as Synapse keeps them: in memory while the task runs
here, and in the database (AdminTaskStore) at each step, so that with workers any
process answers a status query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starling.config import RetentionConfig, RetentionPurgeJob, parse_duration
from starling.errors import MatrixError, not_found
from starling.rooms.client_events import ClientEvents
from starling.rooms.event_service import RoomEventService
from starling.rooms.retention import RetentionLimits
from starling.storage.admin_history import HistoryStore, RoomRetention
from starling.storage.admin_tasks import AdminTaskStore

logger = logging.getLogger(__name__)

STATUS_KEPT_SECONDS = 24 * 3600
MAX_TASKS = 10_000  # statuses kept at once (finished ones are dropped first)


@dataclass
class PurgeTask:
    purge_id: str
    room_id: str
    status: str = "active"
    error: str | None = None
    deleted: int = 0
    finished_at: float | None = None
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class RedactTask:
    redact_id: str
    user_id: str
    status: str = "scheduled"
    failed_redactions: dict[str, str] = field(default_factory=dict)
    redacted: int = 0
    finished_at: float | None = None
    updated_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "failed_redactions": self.failed_redactions}


@dataclass(frozen=True)
class RedactRequest:
    rooms: list[str]
    reason: str | None = None
    limit: int = 1000
    use_admin: bool = False
    after_ts: int | None = None
    before_ts: int | None = None


def _ms(value: str | int | None) -> int | None:
    return None if value is None else parse_duration(value)


class AdminHistory:
    def __init__(
        self,
        *,
        server_name: str,
        store: HistoryStore,
        room_events: RoomEventService,
        client_events: ClientEvents,
        retention: RetentionConfig,
        clock: Callable[[], float] = time.time,
        tasks: AdminTaskStore | None = None,
    ) -> None:
        self._local_suffix = ":" + server_name
        self._store = store
        self._room_events = room_events
        self._client_events = client_events
        self._retention = retention
        self._limits = RetentionLimits(retention)
        self._clock = clock
        self._tasks = tasks
        # The tasks running (or run) here; their statuses also go to `tasks`, which
        # every process reads. Per process: the rooms being purged here (two workers
        # purging one room at once take turns at its write lock; the second finds less
        # to delete).
        self._purges: dict[str, PurgeTask] = {}
        self._purging_rooms: set[str] = set()
        self._redactions: dict[str, RedactTask] = {}
        self._running: set[asyncio.Task[Any]] = set()  # purges and redactions
        self._jobs: list[asyncio.Task[None]] = []  # the retention purge jobs

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def settle(self) -> None:
        """Wait for the purges and redactions started so far (tests; orderly shutdown)."""
        while self._running:
            await asyncio.wait(list(self._running))

    async def close(self) -> None:
        tasks = [*self._running, *self._jobs]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _drop_expired(self, tasks: dict[str, Any]) -> None:
        now = time.monotonic()
        for key, task in list(tasks.items()):
            if task.finished_at is not None and now - task.finished_at > STATUS_KEPT_SECONDS:
                del tasks[key]

    def _expire(self, tasks: dict[str, Any]) -> None:
        self._drop_expired(tasks)
        if len(tasks) >= MAX_TASKS:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many admin tasks; try again later")

    # -- purging history

    async def start_purge(
        self,
        room_id: str,
        *,
        event_id: str | None,
        before_ts: int | None,
        delete_local_events: bool,
    ) -> str:
        """POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]: checks what it can
        at once (404 unknown room or event, 400 a wrong cut-off), purges in the background."""
        self._expire(self._purges)
        if not await self._store.room_exists(room_id):
            raise not_found("Room not found")
        if event_id is not None:
            found = await self._store.event_depth(event_id)
            if found is None:
                raise not_found("Event not found")
            if found[0] != room_id:
                raise MatrixError(400, "M_UNKNOWN", "Event is for wrong room.")
            depth = found[1]
        elif before_ts is not None:
            found_depth = await self._store.cut_depth_at_ts(room_id, before_ts)
            if found_depth is None:
                raise not_found("there is no event to be purged")
            depth = found_depth
        else:
            raise MatrixError(
                400, "M_UNKNOWN", "must specify purge_up_to_event_id or purge_up_to_ts"
            )
        if room_id in self._purging_rooms:
            raise MatrixError(400, "M_UNKNOWN", f"History purge already in progress for {room_id}")
        await self._store.check_purge_point(room_id, depth)
        task = PurgeTask(secrets.token_urlsafe(12), room_id)
        self._purges[task.purge_id] = task
        self._purging_rooms.add(room_id)
        await self._save_purge(task)
        self._spawn(self._run_purge(task, depth, delete_local_events))
        return task.purge_id

    async def _run_purge(self, task: PurgeTask, depth: int, delete_local: bool) -> None:
        try:
            task.deleted = await self.purge(task.room_id, depth, delete_local)
            task.status = "complete"
        except Exception as e:
            logger.exception("purging the history of %s failed", task.room_id)
            task.status = "failed"
            task.error = e.error if isinstance(e, MatrixError) else str(e) or type(e).__name__
        finally:
            task.finished_at = time.monotonic()
            task.updated_ms = int(time.time() * 1000)
            self._purging_rooms.discard(task.room_id)
            await self._save_purge(task)

    async def _save(
        self, task_id: str, action: str, resource: str, status: dict[str, Any], entry: Any
    ) -> None:
        if self._tasks is None:
            return
        try:
            await self._tasks.save(
                task_id, action, resource, status, entry, int(entry["timestamp_ms"])
            )
        except Exception:
            # The task goes on; only other processes' status queries miss this step.
            logger.exception("saving the status of admin task %s failed", task_id)

    async def _save_purge(self, task: PurgeTask) -> None:
        await self._save(
            task.purge_id, "purge_history", task.room_id, task.to_json(), _purge_entry(task)
        )

    async def _save_redact(self, task: RedactTask) -> None:
        await self._save(
            task.redact_id, "redact_all_events", task.user_id, task.to_json(), _redact_entry(task)
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def purge(self, room_id: str, below_depth: int, delete_local: bool) -> int:
        """Purge the room's events below `below_depth` (see HistoryStore): delete them,
        or make the kept local ones outliers; how many were deleted."""
        async with self._room_events.room_lock(room_id):
            await self._store.check_purge_point(room_id, below_depth)
            await self._store.mark_gaps(room_id, below_depth, delete_local)
        deleted = hidden = 0
        while True:
            async with self._room_events.room_lock(room_id):
                gone, outliers = await self._store.purge_batch(room_id, below_depth, delete_local)
            if gone == 0 and outliers == 0:
                break
            deleted += gone
            hidden += outliers
            await asyncio.sleep(0)  # let other requests in between batches
        logger.info(
            "purged %s below depth %d: %d events deleted, %d local ones made outliers",
            room_id,
            below_depth,
            deleted,
            hidden,
        )
        return deleted

    async def purge_status(self, purge_id: str) -> dict[str, Any]:
        task = self._purges.get(purge_id)
        if task is not None:
            return task.to_json()
        if self._tasks is not None:
            found = await self._tasks.status("purge_history", purge_id, self._now_ms())
            if found is not None:
                return found
        raise not_found(f"purge id {purge_id[:80]!r} not found")

    # -- redacting a user's events

    async def start_redact(self, admin_id: str, user_id: str, req: RedactRequest) -> str:
        """POST /_synapse/admin/v1/user/{userId}/redact: answers a redact_id at once."""
        self._expire(self._redactions)
        rooms = req.rooms or await self._store.rooms_of_user(user_id)
        task = RedactTask(secrets.token_urlsafe(12), user_id)
        self._redactions[task.redact_id] = task
        await self._save_redact(task)
        self._spawn(self._run_redact(task, admin_id, rooms, req))
        return task.redact_id

    async def _run_redact(
        self, task: RedactTask, admin_id: str, rooms: list[str], req: RedactRequest
    ) -> None:
        task.status = "active"
        task.updated_ms = int(time.time() * 1000)
        await self._save_redact(task)
        try:
            targets = await self._store.events_to_redact(
                task.user_id, rooms, limit=req.limit, after_ts=req.after_ts, before_ts=req.before_ts
            )
            local = task.user_id.endswith(self._local_suffix)
            sender = task.user_id if local and not req.use_admin else admin_id
            for room_id, event_id in targets:
                try:
                    await self._client_events.redact(
                        room_id,
                        sender,
                        event_id,
                        req.reason,
                        device_id=None,
                        txn_id=secrets.token_urlsafe(12),
                        rate_limited=False,
                    )
                    task.redacted += 1
                except MatrixError as e:
                    task.failed_redactions[event_id] = e.error
            task.status = "complete"
        except Exception as e:
            logger.exception("redacting the events of %s failed", task.user_id)
            task.status = "failed"
            task.failed_redactions.setdefault("", str(e) or type(e).__name__)
        finally:
            task.finished_at = time.monotonic()
            task.updated_ms = int(time.time() * 1000)
            await self._save_redact(task)

    async def redact_status(self, redact_id: str) -> dict[str, Any]:
        task = self._redactions.get(redact_id)
        if task is not None:
            return task.to_json()
        if self._tasks is not None:
            found = await self._tasks.status("redact_all_events", redact_id, self._now_ms())
            if found is not None:
                return found
        raise not_found(f"redact id {redact_id[:80]!r} not found")

    async def scheduled_tasks(self) -> list[dict[str, Any]]:
        """The purges and redactions of the last day, as Synapse's scheduled tasks (the
        ones running here as they are now, the others as last saved)."""
        self._drop_expired(self._purges)
        self._drop_expired(self._redactions)
        out: dict[str, dict[str, Any]] = {}
        if self._tasks is not None:
            for action in ("purge_history", "redact_all_events"):
                for entry in await self._tasks.tasks(action, self._now_ms()):
                    out[entry["id"]] = entry
        for p in self._purges.values():
            out[p.purge_id] = _purge_entry(p)
        for r in self._redactions.values():
            out[r.redact_id] = _redact_entry(r)
        return list(out.values())

    # -- retention

    def effective_lifetime(self, policy: dict[str, Any] | None) -> int | None:
        """How long (ms) a room's messages live (rooms.retention); None: forever."""
        return self._limits.lifetime(policy)

    async def run_retention_job(self, job: RetentionPurgeJob) -> int:
        """One run of a purge job: every room whose lifetime lies in the job's range
        loses its history older than that lifetime; how many events went in all."""
        shortest = _ms(job.shortest_max_lifetime)
        longest = _ms(job.longest_max_lifetime)
        now_ms = int(self._clock() * 1000)
        total = 0
        rooms: list[RoomRetention] = await self._store.retention_policies()
        for room in rooms:
            lifetime = self.effective_lifetime(room.policy)
            if lifetime is None:
                continue
            if shortest is not None and lifetime <= shortest:
                continue
            if longest is not None and lifetime > longest:
                continue
            if room.room_id in self._purging_rooms:
                continue
            depth = await self._store.cut_depth_at_ts(room.room_id, now_ms - lifetime)
            if depth is None:
                continue
            self._purging_rooms.add(room.room_id)
            try:
                total += await self.purge(room.room_id, depth, True)
            except MatrixError as e:
                logger.info("retention: not purging %s: %s", room.room_id, e.error)
            finally:
                self._purging_rooms.discard(room.room_id)
        return total

    def start(self) -> None:
        """The retention purge jobs, when `retention.enabled`."""
        if not self._retention.enabled:
            return
        for job in self._retention.purge_jobs:
            self._jobs.append(asyncio.ensure_future(self._job_loop(job)))

    async def _job_loop(self, job: RetentionPurgeJob) -> None:
        interval = parse_duration(job.interval) / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await self.run_retention_job(job)
                if purged:
                    logger.info("retention: purged %d expired events", purged)
            except Exception:
                logger.exception("retention: a purge job failed")


def _purge_entry(t: PurgeTask) -> dict[str, Any]:
    return {
        "id": t.purge_id,
        "action": "purge_history",
        "status": t.status,
        "timestamp_ms": t.updated_ms,
        "resource_id": t.room_id,
        "result": {"deleted_events": t.deleted},
        "error": t.error,
    }


def _redact_entry(t: RedactTask) -> dict[str, Any]:
    return {
        "id": t.redact_id,
        "action": "redact_all_events",
        "status": t.status,
        "timestamp_ms": t.updated_ms,
        "resource_id": t.user_id,
        "result": {"redacted": t.redacted, "failed_redactions": t.failed_redactions},
        "error": None,
    }
