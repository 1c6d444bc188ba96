"""AdminTaskStore on both engines: what any process answers about an admin task."""

from __future__ import annotations

from starling.storage import Database
from starling.storage.admin_tasks import STATUS_KEPT_MS, AdminTaskStore

NOW = 1_700_000_000_000


async def test_statuses_are_read_back_and_expire_after_a_day(database: Database) -> None:
    store = AdminTaskStore(database)
    entry = {"id": "t1", "action": "purge_history", "status": "active", "timestamp_ms": NOW}
    await store.save("t1", "purge_history", "!r:x", {"status": "active"}, entry, NOW)
    assert await store.status("purge_history", "t1", NOW) == {"status": "active"}
    # Another action's ID space: not found.
    assert await store.status("redact_all_events", "t1", NOW) is None
    # A later step replaces the earlier one.
    done = {**entry, "status": "complete", "timestamp_ms": NOW + 5}
    await store.save("t1", "purge_history", "!r:x", {"status": "complete"}, done, NOW + 5)
    assert await store.status("purge_history", "t1", NOW + 5) == {"status": "complete"}
    assert await store.tasks("purge_history", NOW + 5) == [done]
    await store.save("t2", "purge_history", "!s:x", {"status": "active"}, entry, NOW + 6)
    assert await store.statuses_of("purge_history", "!r:x", NOW + 6) == [{"status": "complete"}]
    # A day later t1 is no longer answered, and a save then deletes it.
    later = NOW + 5 + STATUS_KEPT_MS + 1
    assert await store.status("purge_history", "t1", later) is None
    await store.save("t3", "purge_history", "!t:x", {"status": "active"}, entry, later)
    row = await database.fetch_one("SELECT COUNT(*) FROM admin_task_statuses")
    assert row is not None and row[0] == 2  # t2 and t3
