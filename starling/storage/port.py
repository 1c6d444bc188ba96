"""`starling port-db`: copy a SQLite database into PostgreSQL (docs/scaling.md).

Like Synapse's synapse_port_db: the server is stopped, the PostgreSQL database is new (or
holds an interrupted port of the same SQLite file, which `resume` finishes), and every
table is copied with its rows as they are, then every identity column's sequence and
every stream's sequence is set past what was copied, and the row counts are compared.

- Schema: both databases are brought to this version's schema by the migrator first, so
  their tables are the same; SQLite's full-text tables (FTS5 and their shadows) are not
  copied — PostgreSQL indexes the copied rows itself (generated tsvector columns, GIN
  indexes on expressions). Generated columns are left to PostgreSQL.
- Types follow the PostgreSQL column: SQLite's 0/1 become booleans, blobs bytea.
- Order: tables that others reference first (their foreign keys hold at every commit).
- Resumable: each batch of rows is written in one transaction together with how far the
  table has been copied (the `port_db_progress` table, dropped once the port is
  verified), so an interrupted port continues where it stopped and copies nothing twice.
- Refuses while the server runs: a SQLite file some process has open (the lock every
  SQLite connection holds on its WAL index), or another connection to the PostgreSQL
  database.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starling.storage.database import Database, StorageError
from starling.storage.streams import STREAM_LOCK_CLASS, advisory_key

BATCH_ROWS = 2000
# The migrator's own bookkeeping: each side has it already.
_NOT_COPIED = {"schema_version", "sqlite_sequence", "port_db_progress"}
# SQLite's WAL-index "dead man switch" byte: every connection to a WAL database holds a
# shared lock on it while open (sqlite3 os_unix.c, UNIX_SHM_DMS).
_SHM_DMS_OFFSET = 128

Progress = Callable[[str, int, int], None]  # (table, rows copied, rows in the table)


class PortError(StorageError):
    """The port cannot run (or cannot go on); the message says why and what to do."""


@dataclass
class PortReport:
    tables: dict[str, int] = field(default_factory=dict)  # rows copied (total) per table
    sequences: dict[str, int] = field(default_factory=dict)  # sequence -> value set
    resumed: bool = False


def sqlite_in_use(path: Path) -> bool:
    """Whether some process has the SQLite database open (a running server). Call it
    before this process opens the file: POSIX locks are per process, and closing the
    descriptor here would drop this process's own SQLite locks on it."""
    shm = Path(str(path) + "-shm")
    if not shm.exists():
        return False  # the last connection to close removes it; none is open
    try:
        fd = os.open(shm, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_OFFSET)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS_OFFSET)
        return False
    finally:
        os.close(fd)


def _source_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    fts = {name for name, sql in rows if sql and "VIRTUAL TABLE" in sql.upper()}
    tables = []
    for name, sql in rows:
        if name in _NOT_COPIED or name.startswith("sqlite_") or name in fts:
            continue
        if any(name.startswith(f + "_") for f in fts):
            continue  # an FTS5 shadow table (_data, _idx, _docsize, _config, _content)
        if sql and "WITHOUT ROWID" in sql.upper():
            raise PortError(f"table {name} has no rowid: this port cannot resume it")
        tables.append(name)
    return tables


async def _target_columns(db: Database) -> dict[str, dict[str, str]]:
    """table -> {column: PostgreSQL data type}, generated columns left out."""
    rows = await db.fetch_all(
        "SELECT table_name, column_name, data_type, is_generated"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " ORDER BY table_name, ordinal_position"
    )
    out: dict[str, dict[str, str]] = {}
    for table, column, data_type, generated in rows:
        if generated == "ALWAYS":
            continue
        out.setdefault(str(table), {})[str(column)] = str(data_type)
    return out


async def _dependency_order(db: Database, tables: Sequence[str]) -> list[str]:
    """`tables` with each after the tables its foreign keys reference."""
    rows = await db.fetch_all(
        "SELECT tc.table_name, ccu.table_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.constraint_column_usage ccu"
        "   ON ccu.constraint_name = tc.constraint_name"
        "  AND ccu.constraint_schema = tc.constraint_schema"
        " WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema()"
    )
    needs: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in rows:
        if child in needs and parent in needs and child != parent:
            needs[str(child)].add(str(parent))
    ordered: list[str] = []
    placed: set[str] = set()
    while len(ordered) < len(tables):
        ready = sorted(t for t in tables if t not in placed and needs[t] <= placed)
        if not ready:
            raise PortError(f"foreign keys form a cycle among {sorted(set(tables) - placed)}")
        ordered.extend(ready)
        placed.update(ready)
    return ordered


def _converter(data_type: str) -> Callable[[Any], Any]:
    if data_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if data_type == "bytea":
        return lambda v: v if v is None or isinstance(v, bytes) else str(v).encode()
    if data_type in ("bigint", "integer", "smallint"):
        return lambda v: None if v is None else int(v)
    if data_type in ("double precision", "real", "numeric"):
        return lambda v: None if v is None else float(v)
    if data_type == "text" or data_type.startswith("character"):
        return lambda v: v.decode() if isinstance(v, bytes) else (None if v is None else str(v))
    return lambda v: v


async def other_connections(db: Database) -> int:
    """Connections to this PostgreSQL database other than this one (open `db` with a
    pool of one connection, as port-db does)."""
    return int(
        await db.fetch_val(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    )


async def port_sqlite_to_postgres(
    source_path: Path,
    target: Database,
    *,
    resume: bool = False,
    progress: Progress | None = None,
) -> PortReport:
    """Copy every table of the SQLite database at `source_path` into `target` (migrated,
    PostgreSQL). See the module docstring for the checks; raises PortError."""
    if target.dialect != "postgres":
        raise PortError("the target must be PostgreSQL")
    # Read in worker threads, one at a time (never concurrently).
    conn = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, check_same_thread=False)
    try:
        return await _port(conn, target, resume=resume, progress=progress or (lambda *_: None))
    finally:
        conn.close()


async def _port(
    conn: sqlite3.Connection, target: Database, *, resume: bool, progress: Progress
) -> PortReport:
    report = PortReport(resumed=resume)
    source_version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    target_version = await target.fetch_val("SELECT max(version) FROM schema_version")
    if source_version != target_version:
        raise PortError(
            f"the SQLite database is at schema version {source_version}, PostgreSQL at "
            f"{target_version}: both must be at this Starling's"
        )
    columns = await _target_columns(target)
    tables = _source_tables(conn)
    missing = [t for t in tables if t not in columns]
    if missing:
        raise PortError(f"tables missing in PostgreSQL: {', '.join(missing)}")
    tables = await _dependency_order(target, tables)

    has_progress = bool(
        await target.fetch_val("SELECT to_regclass('port_db_progress') IS NOT NULL")
    )
    if resume and not has_progress:
        raise PortError("nothing to resume: no interrupted port in this database")
    if not resume:
        if has_progress:
            raise PortError("an interrupted port is in this database: run again with --resume")
        for table in tables:
            if await target.fetch_val(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
                raise PortError(
                    f"the PostgreSQL database is not empty (table {table} has rows): "
                    "port into a new database"
                )
        await target.execute(
            "CREATE TABLE port_db_progress (table_name TEXT PRIMARY KEY,"
            " last_rowid BIGINT NOT NULL, copied BIGINT NOT NULL, done BOOLEAN NOT NULL)"
        )

    for table in tables:
        report.tables[table] = await _copy_table(conn, target, table, columns[table], progress)

    report.sequences = await _set_sequences(conn, target, columns)
    await _verify(conn, target, tables)
    await target.execute("DROP TABLE port_db_progress")
    return report


async def _copy_table(
    conn: sqlite3.Connection,
    target: Database,
    table: str,
    target_columns: dict[str, str],
    progress: Progress,
) -> int:
    row = await target.fetch_one(
        "SELECT last_rowid, copied, done FROM port_db_progress WHERE table_name = ?", table
    )
    last_rowid, copied = (int(row[0]), int(row[1])) if row is not None else (-(2**63), 0)
    total = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    if row is not None and row[2]:
        progress(table, copied, total)
        return copied
    source_columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")').fetchall()]
    names = [c for c in source_columns if c in target_columns]
    converters = [_converter(target_columns[c]) for c in names]
    quoted = ", ".join(f'"{c}"' for c in names)
    insert = f'INSERT INTO "{table}" ({quoted}) VALUES (' + ", ".join("?" for _ in names) + ")"
    select = (
        f'SELECT rowid, {quoted} FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT {BATCH_ROWS}'
    )
    progress(table, copied, total)
    while True:
        batch = await asyncio.to_thread(_fetch, conn, select, last_rowid)
        if not batch:
            break
        rows = [[convert(v) for convert, v in zip(converters, r[1:], strict=True)] for r in batch]
        last_rowid = int(batch[-1][0])
        copied += len(batch)
        async with target.transaction(heavy=True) as txn:
            await txn.executemany(insert, rows)
            await _record(txn, table, last_rowid, copied, done=False)
        progress(table, copied, total)
    async with target.transaction(heavy=True) as txn:
        await _record(txn, table, last_rowid, copied, done=True)
    return copied


def _fetch(conn: sqlite3.Connection, select: str, after: int) -> list[Any]:
    return conn.execute(select, (after,)).fetchall()


async def _record(txn: Any, table: str, last_rowid: int, copied: int, *, done: bool) -> None:
    await txn.execute(
        "INSERT INTO port_db_progress (table_name, last_rowid, copied, done)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (table_name) DO UPDATE SET"
        " last_rowid = excluded.last_rowid, copied = excluded.copied, done = excluded.done",
        table,
        last_rowid,
        copied,
        done,
    )


async def _set_sequences(
    conn: sqlite3.Connection, target: Database, columns: dict[str, dict[str, str]]
) -> dict[str, int]:
    """Identity columns continue after the copied rows; every stream's sequence is set
    to the position SQLite had reached (stream_positions), so positions stay increasing
    and sync tokens clients hold stay valid."""
    out: dict[str, int] = {}
    identities = await target.fetch_all(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    for table, column in identities:
        if table not in columns or table == "port_db_progress":
            continue
        top = await target.fetch_val(f'SELECT max("{column}") FROM "{table}"')
        if top is None:
            continue
        sequence = await target.fetch_val(
            "SELECT pg_get_serial_sequence(?, ?)", f'"{table}"', str(column)
        )
        await target.fetch_val("SELECT setval(?::regclass, ?)", sequence, int(top))
        out[str(sequence)] = int(top)
    streams = conn.execute("SELECT stream_name, position FROM stream_positions").fetchall()
    for name, position in streams:
        sequence = f"stream_seq_{name}"
        if not str(name).replace("_", "").isalnum():
            raise PortError(f"unexpected stream name {name!r}")
        async with target.transaction(heavy=True) as txn:
            await txn.execute(
                "SELECT pg_advisory_xact_lock(?, ?)", STREAM_LOCK_CLASS, advisory_key(name)
            )
            await txn.execute(f"CREATE SEQUENCE IF NOT EXISTS {sequence} MINVALUE 1")
            if int(position) > 0:
                await txn.fetch_val(f"SELECT setval('{sequence}', ?)", int(position))
        out[sequence] = int(position)
    return out


async def _verify(conn: sqlite3.Connection, target: Database, tables: Sequence[str]) -> None:
    wrong = []
    for table in tables:
        source = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        copied = await target.fetch_val(f'SELECT count(*) FROM "{table}"')
        if int(copied) != int(source):
            wrong.append(f"{table}: {source} in SQLite, {copied} in PostgreSQL")
    if wrong:
        raise PortError("row counts differ after the copy: " + "; ".join(wrong))
