"""The Database API and migrations, on both engines."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import starling.storage.sqlite as sqlite_engine
from starling.storage import (
    Database,
    IntegrityError,
    SchemaTooNewError,
    StorageError,
    UniqueViolation,
    open_database,
)
from starling.storage.migrator import (
    Migration,
    apply_migrations,
    load_migrations,
    schema_version,
)
from starling.storage.postgres import PostgresDatabase
from tests.support.dbfixtures import postgres_admin_dsn, small_pool_config


async def _make_table(db: Database) -> None:
    await db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")


# -- migrations


async def test_migrations_apply_and_are_idempotent_on_reopen(database_url: str) -> None:
    latest = load_migrations("sqlite")[-1].version
    db = await open_database(small_pool_config(database_url))
    try:
        assert await schema_version(db) == latest
        assert await db.fetch_val("SELECT COUNT(*) FROM users") == 0
        await db.execute(
            "INSERT INTO users (user_id, created_ts) VALUES (?, ?)", "@kept:example.org", 1
        )
    finally:
        await db.close()

    db = await open_database(small_pool_config(database_url))
    try:
        assert await schema_version(db) == latest
        rows = await db.fetch_all("SELECT version FROM schema_version")
        assert [row["version"] for row in rows] == list(range(1, latest + 1))
        assert await db.fetch_val("SELECT user_id FROM users") == "@kept:example.org"
    finally:
        await db.close()


async def test_schema_newer_than_code_is_refused(database_url: str) -> None:
    db = await open_database(small_pool_config(database_url))
    try:
        await db.execute(
            "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
            9999,
            "from_the_future",
            0,
        )
    finally:
        await db.close()
    with pytest.raises(SchemaTooNewError, match="9999"):
        await open_database(small_pool_config(database_url))


async def test_failed_migration_leaves_previous_version(
    engine: str, database_url: str, tmp_path: Path
) -> None:
    db = await open_database(small_pool_config(database_url), migrate=False)
    try:
        good = Migration(1, "good", "CREATE TABLE good (x INTEGER);")
        bad = Migration(2, "bad", "CREATE TABLE partial (x INTEGER);\nSELECT * FROM missing;")
        with pytest.raises(Exception, match="missing"):
            await apply_migrations(db, [good, bad])
        assert await schema_version(db) == 1
        await db.fetch_all("SELECT * FROM good")
        with pytest.raises(Exception, match="partial"):
            await db.fetch_all("SELECT * FROM partial")
    finally:
        await db.close()


def test_dialect_specific_migration_wins(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t (b {blob});")
    (tmp_path / "0002_second.sql").write_text("SELECT 'shared';")
    (tmp_path / "0002_second.postgres.sql").write_text("SELECT 'postgres';")
    directory: Traversable = tmp_path
    sqlite_migrations = load_migrations("sqlite", directory)
    postgres_migrations = load_migrations("postgres", directory)
    assert [m.sql for m in sqlite_migrations] == ["CREATE TABLE t (b BLOB);", "SELECT 'shared';"]
    assert [m.sql for m in postgres_migrations] == [
        "CREATE TABLE t (b BYTEA);",
        "SELECT 'postgres';",
    ]


def test_gap_in_migrations_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "0003_third.sql").write_text("SELECT 3;")
    with pytest.raises(StorageError, match="0002 is missing"):
        load_migrations("sqlite", tmp_path)


# -- queries


async def test_rows_by_index_and_by_name(database: Database) -> None:
    await _make_table(database)
    await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
    row = await database.fetch_one("SELECT k, v FROM kv WHERE k = ?", "a")
    assert row is not None
    assert row[0] == "a" and row["k"] == "a"
    assert row[1] == 1 and row["v"] == 1
    assert tuple(row) == ("a", 1)
    assert len(row) == 2
    assert list(row.keys()) == ["k", "v"]
    assert await database.fetch_one("SELECT k FROM kv WHERE k = ?", "nope") is None
    assert await database.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 1
    assert await database.fetch_val("SELECT v FROM kv WHERE k = ?", "nope") is None


async def test_question_marks_in_literals_are_not_parameters(database: Database) -> None:
    row = await database.fetch_one("SELECT '?' AS q, 'it''s?' AS r, ? AS p", "param")
    assert row is not None
    assert tuple(row) == ("?", "it's?", "param")


async def test_execute_returns_rows_changed(database: Database) -> None:
    await _make_table(database)
    assert (
        await database.execute("INSERT INTO kv (k, v) VALUES (?, ?), (?, ?)", "a", 1, "b", 2) == 2
    )
    assert await database.execute("UPDATE kv SET v = v + 1") == 2
    assert await database.execute("DELETE FROM kv WHERE k = ?", "zzz") == 0


async def test_executemany_and_array_parameters(database: Database) -> None:
    await _make_table(database)
    async with database.transaction() as txn:
        await txn.executemany(
            "INSERT INTO kv (k, v) VALUES (?, ?)", [(f"k{i}", i) for i in range(100)]
        )
    sql = database.sql
    rows = await database.fetch_all(
        f"SELECT k FROM kv WHERE {sql.in_array('k')} ORDER BY v", sql.array(["k3", "k1", "x"])
    )
    assert [row["k"] for row in rows] == ["k1", "k3"]
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 100


async def test_unique_violation_is_translated(database: Database) -> None:
    await _make_table(database)
    await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
    with pytest.raises(UniqueViolation):
        await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 2)
    with pytest.raises(IntegrityError) as not_null:
        await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "b", None)
    assert not isinstance(not_null.value, UniqueViolation)
    with pytest.raises(UniqueViolation):
        async with database.transaction() as txn:
            await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "c", 1)
            await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "c", 2)
    assert await database.fetch_val("SELECT COUNT(*) FROM kv WHERE k = ?", "c") == 0


async def test_foreign_keys_are_enforced(database: Database) -> None:
    with pytest.raises(IntegrityError):
        await database.execute(
            "INSERT INTO devices (user_id, device_id) VALUES (?, ?)", "@nobody:x", "D"
        )


# -- transactions


async def test_transaction_commits(database: Database) -> None:
    await _make_table(database)
    committed: list[str] = []
    async with database.transaction() as txn:
        await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
        assert await txn.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 1
        txn.call_after_commit(lambda: committed.append("yes"))
        txn.call_on_rollback(lambda: committed.append("rolled back"))
        assert committed == []
    assert committed == ["yes"]
    assert await database.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 1


async def test_rollback_on_exception(database: Database) -> None:
    await _make_table(database)
    events: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with database.transaction() as txn:
            await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
            txn.call_after_commit(lambda: events.append("committed"))
            txn.call_on_rollback(lambda: events.append("rolled back"))
            raise RuntimeError("boom")
    assert events == ["rolled back"]
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 0
    # The writer is usable again afterwards.
    async with database.transaction() as txn:
        await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "b", 2)
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 1


async def test_transaction_cannot_be_used_after_its_block(database: Database) -> None:
    async with database.transaction() as txn:
        pass
    with pytest.raises(StorageError, match="outside"):
        await txn.fetch_val("SELECT 1")


async def test_concurrent_read_modify_write_transactions_keep_every_increment(
    database: Database,
) -> None:
    await _make_table(database)
    await database.execute("INSERT INTO kv (k, v) VALUES ('counter', 0)")

    async def increment() -> None:
        async with database.transaction() as txn:
            value = await txn.fetch_val(f"SELECT v FROM kv WHERE k = 'counter'{txn.sql.for_update}")
            await asyncio.sleep(0)  # let the others run in between
            await txn.execute("UPDATE kv SET v = ? WHERE k = 'counter'", value + 1)

    await asyncio.gather(*(increment() for _ in range(50)))
    assert await database.fetch_val("SELECT v FROM kv WHERE k = 'counter'") == 50


async def test_concurrent_single_writes(database: Database) -> None:
    await _make_table(database)
    await asyncio.gather(
        *(database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", f"k{i}", i) for i in range(50))
    )
    assert await database.fetch_val("SELECT SUM(v) FROM kv") == sum(range(50))


async def test_reads_see_committed_writes_and_not_uncommitted_ones(database: Database) -> None:
    await _make_table(database)
    if isinstance(database, PostgresDatabase):
        database.pool_in_transaction = "allow"  # a pooled read inside one, on purpose
    for i in range(20):
        await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", f"k{i}", i)
        # Each read may land on any reader connection; every one must see the write.
        assert await database.fetch_val("SELECT COUNT(*) FROM kv") == i + 1
    async with database.transaction() as txn:
        await txn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "pending", 0)
        assert await database.fetch_val("SELECT COUNT(*) FROM kv WHERE k = 'pending'") == 0
    assert await database.fetch_val("SELECT COUNT(*) FROM kv WHERE k = 'pending'") == 1


async def test_concurrent_reads(database: Database) -> None:
    await _make_table(database)
    await database.execute("INSERT INTO kv (k, v) VALUES ('a', 7)")
    results = await asyncio.gather(*(database.fetch_val("SELECT v FROM kv") for _ in range(40)))
    assert results == [7] * 40


# -- engine specifics


def _spy_threads(monkeypatch: pytest.MonkeyPatch, *names: str) -> dict[str, set[int]]:
    """Which threads ran each of these sqlite engine functions."""
    seen: dict[str, set[int]] = {name: set() for name in names}

    def spy(name: str) -> None:
        real = getattr(sqlite_engine, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name].add(threading.get_ident())
            return real(*args, **kwargs)

        monkeypatch.setattr(sqlite_engine, name, wrapper)

    for name in names:
        spy(name)
    return seen


async def test_sqlite_keeps_connects_reads_and_large_writes_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen = _spy_threads(
        monkeypatch, "_connect", "_fetch_all", "_fetch_one", "_execute", "_executemany", "_begin"
    )
    db = await open_database(small_pool_config(str(tmp_path / "db.sqlite")))
    assert seen["_connect"] and loop_thread not in seen["_connect"]
    for threads in seen.values():
        threads.clear()  # the migrations' small transactions may have run inline
    try:
        await _make_table(db)  # a single statement: any size, so the writer thread
        await db.fetch_all("SELECT * FROM kv")
        await db.fetch_one("SELECT * FROM kv")
        async with db.transaction(heavy=True) as txn:
            await txn.execute("INSERT INTO kv (k, v) VALUES ('h', 1)")
            await txn.fetch_one("SELECT * FROM kv")
        many = [(f"k{i}", i) for i in range(sqlite_engine.INLINE_MAX_ROWS + 1)]
        async with db.transaction() as txn:
            await txn.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", many)
        assert await db.fetch_val("SELECT COUNT(*) FROM kv") == len(many) + 1
    finally:
        await db.close()
    used = set().union(*seen.values())
    assert seen["_begin"] and seen["_executemany"] and seen["_fetch_one"]
    assert used and loop_thread not in used


async def test_sqlite_runs_a_small_write_on_the_loop_only_while_the_writer_is_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    db = await open_database(small_pool_config(str(tmp_path / "db.sqlite")))
    assert isinstance(db, sqlite_engine.SqliteDatabase)
    try:
        await _make_table(db)
        seen = _spy_threads(monkeypatch, "_begin", "_execute")
        async with db.transaction() as txn:
            await txn.execute("INSERT INTO kv (k, v) VALUES ('a', 1)")
        assert seen["_begin"] == {loop_thread} and seen["_execute"] == {loop_thread}

        # Keep the writer thread busy: the next small transaction must queue behind
        # that job, on that thread (one connection, never two threads at once).
        release = threading.Event()
        order: list[str] = []

        def busy(conn: Any) -> None:
            release.wait(10)
            order.append("busy")

        blocker = db._submit_write(busy)
        seen["_begin"].clear()

        async def small() -> None:
            async with db.transaction() as txn:
                await txn.execute("INSERT INTO kv (k, v) VALUES ('b', 2)")
            order.append("small")

        task = asyncio.create_task(small())
        await asyncio.sleep(0.05)
        assert not task.done() and order == []
        release.set()
        await blocker
        await task
        assert order == ["busy", "small"]
        assert seen["_begin"] and loop_thread not in seen["_begin"]
        # Idle again: back on the loop.
        seen["_begin"].clear()
        async with db.transaction() as txn:
            await txn.execute("INSERT INTO kv (k, v) VALUES ('c', 3)")
        assert seen["_begin"] == {loop_thread}
        rows = await db.fetch_all("SELECT k FROM kv ORDER BY k")
        assert [r["k"] for r in rows] == ["a", "b", "c"]
    finally:
        await db.close()


async def test_sqlite_inline_commit_failure_rolls_back_and_leaves_a_clean_writer(
    tmp_path: Path,
) -> None:
    db = await open_database(small_pool_config(str(tmp_path / "db.sqlite")))
    try:
        await _make_table(db)
        async with db.transaction() as txn:
            await txn.queue("INSERT INTO kv (k, v) VALUES ('a', 1)")
        with pytest.raises(UniqueViolation):
            async with db.transaction() as txn:
                await txn.queue("INSERT INTO kv (k, v) VALUES ('b', 2)")
                await txn.queue("INSERT INTO kv (k, v) VALUES ('a', 3)")  # the commit fails
        async with db.transaction() as txn:
            await txn.queue("INSERT INTO kv (k, v) VALUES ('c', 4)")
        rows = await db.fetch_all("SELECT k, v FROM kv ORDER BY k")
        assert [(r["k"], r["v"]) for r in rows] == [("a", 1), ("c", 4)]
    finally:
        await db.close()


async def test_sqlite_checkpoints_on_its_own_thread(tmp_path: Path) -> None:
    """SQLite's automatic checkpoint (inside a COMMIT, which may be on the loop) is off;
    the checkpoint thread checkpoints every CHECKPOINT_EVERY commits and after a heavy
    transaction, while writes go on."""
    loop_thread = threading.get_ident()
    db = await open_database(small_pool_config(str(tmp_path / "db.sqlite")))
    assert isinstance(db, sqlite_engine.SqliteDatabase)
    ran: list[int] = []
    real = db._checkpoint

    def spy() -> None:
        ran.append(threading.get_ident())
        real()

    db._checkpoint = spy  # type: ignore[method-assign]

    async def checkpoint_finished() -> None:
        for _ in range(500):
            if ran and not db._checkpointing:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no checkpoint ran")

    try:
        await _make_table(db)
        async with db.transaction() as txn:
            assert await txn.fetch_val("PRAGMA wal_autocheckpoint") == 0
        for _ in range(500):  # one the migrations started may still run
            if not db._checkpointing:
                break
            await asyncio.sleep(0.01)
        ran.clear()
        db._commits = 0
        for i in range(sqlite_engine.CHECKPOINT_EVERY - 1):
            async with db.transaction() as txn:
                await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", f"k{i}", i)
        assert not ran
        async with db.transaction() as txn:
            await txn.queue("INSERT INTO kv (k, v) VALUES ('last', 0)")
        await checkpoint_finished()
        assert loop_thread not in ran
        # Everything committed so far is now in the database file: a fresh connection
        # reading the file alone (no WAL) sees it.
        snapshot = tmp_path / "copy.sqlite"
        snapshot.write_bytes((tmp_path / "db.sqlite").read_bytes())
        assert (
            await asyncio.to_thread(
                lambda: sqlite3.connect(snapshot).execute("SELECT COUNT(*) FROM kv").fetchone()[0]
            )
            == sqlite_engine.CHECKPOINT_EVERY
        )
        ran.clear()
        async with db.transaction(heavy=True) as txn:
            await txn.queue("DELETE FROM kv")
        await checkpoint_finished()
    finally:
        await db.close()


async def test_sqlite_settings(tmp_path: Path) -> None:
    db = await open_database(small_pool_config(str(tmp_path / "db.sqlite")))
    try:
        assert await db.fetch_val("PRAGMA journal_mode") == "wal"
        assert await db.fetch_val("PRAGMA foreign_keys") == 1
        assert await db.fetch_val("PRAGMA synchronous") == 1  # NORMAL
        assert await db.fetch_val("PRAGMA busy_timeout") > 0
        with pytest.raises(Exception, match="readonly"):
            # Reads outside transactions use read-only connections.
            await db.fetch_all(
                "INSERT INTO users (user_id, created_ts) VALUES ('@x:y', 1) RETURNING 1"
            )
    finally:
        await db.close()


async def test_sqlite_memory_database() -> None:
    db = await open_database(":memory:")
    assert isinstance(db, sqlite_engine.SqliteDatabase)
    directory = Path(db.path).parent
    try:
        await db.execute("INSERT INTO users (user_id, created_ts) VALUES ('@m:x', 1)")
        assert await db.fetch_val("SELECT user_id FROM users") == "@m:x"
    finally:
        await db.close()
    assert not directory.exists()


# -- closing


async def test_close_is_clean(engine: str, database_url: str) -> None:
    db = await open_database(small_pool_config(database_url))
    await db.execute("INSERT INTO users (user_id, created_ts) VALUES ('@c:x', 1)")
    assert await db.fetch_val("SELECT COUNT(*) FROM users") == 1
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await db.fetch_val("SELECT 1")
    with pytest.raises(StorageError, match="closed"):
        await db.execute("SELECT 1")
    with pytest.raises(StorageError, match="closed"):
        async with db.transaction():
            pass
    if engine == "sqlite":
        # The last connection to close checkpoints and removes the WAL file.
        assert not await asyncio.to_thread(Path(database_url + "-wal").exists)
        assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-")]
    else:
        conn = await asyncpg.connect(postgres_admin_dsn())
        try:
            name = database_url.rsplit("/", 1)[1]
            left = await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1", name
            )
        finally:
            await conn.close()
        assert left == 0


async def test_close_waits_for_a_running_transaction(database_url: str) -> None:
    db = await open_database(small_pool_config(database_url))
    entered = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as txn:
            entered.set()
            await asyncio.sleep(0.05)
            await txn.execute("INSERT INTO users (user_id, created_ts) VALUES ('@w:x', 1)")

    task = asyncio.create_task(writer())
    await entered.wait()
    await db.close()
    await task
    db = await open_database(small_pool_config(database_url))
    try:
        assert await db.fetch_val("SELECT user_id FROM users") == "@w:x"
    finally:
        await db.close()
