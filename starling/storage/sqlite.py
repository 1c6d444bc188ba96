"""The SQLite engine: stdlib sqlite3 in WAL mode, one writer thread, a pool of readers.

SQLite allows one writer at a time, so instead of letting connections fight over the lock
(SQLITE_BUSY), every write runs on one connection owned by one thread (a single-thread
executor). An asyncio lock hands that writer to one ``transaction()`` block (or one
``execute``) at a time, FIFO. Reads outside transactions run on a small pool of reader
threads, each with its own read-only connection; WAL lets them read while the writer
writes, and each read sees everything committed before it started.

Commits are pipelined: a block's last job (its deferred statements and COMMIT) is handed
to the writer thread and the lock passes on at once, so the next transaction's first
statements queue right behind that COMMIT instead of waiting for the event loop to
notice it finished (under load, a wait for a core). The writer thread runs jobs in order,
so the next transaction sees the commit; a COMMIT that fails rolls back in its own job,
before anything queued behind it runs. The block's caller still returns only once its
COMMIT is done (a read after a write sees it) and its after-commit callbacks have run.

Small writes run on the event loop's own thread when the writer thread is idle. A job
handed to the writer thread costs two thread switches and, worse, a wait for the GIL
each time sqlite3 takes it back after a statement while the loop is busy: under 16
concurrent senders on 2 cores that made the writer thread, not the CPU, the limit
(docs/performance.md, "fourth pass": 411-512 msg/s with every write on the thread,
717-760 with small ones inline). A job runs inline only when nothing is queued on or
running in the writer thread (so the one connection is never used by two threads at once
and jobs still run in the order they were submitted), the transaction was not opened with
``heavy=True`` (purges, migrations, ports: statements that may scan or delete many rows),
and it is small (at most INLINE_MAX_OPS statements and INLINE_MAX_ROWS rows of
``executemany``). Everything else, connect and close, and reads go to threads.

SQLite's automatic checkpoint runs inside a COMMIT, which could now be on the loop's
thread, so the writer connection has it off. A checkpoint thread with its own connection
checkpoints instead (PASSIVE: it copies what no reader still needs, and the writer goes on
appending meanwhile) every CHECKPOINT_EVERY commits and after every transaction that was
not small.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from starling.storage.database import (
    Database,
    IntegrityError,
    Row,
    StorageError,
    Transaction,
    UniqueViolation,
)
from starling.storage.dialect import SQLITE

T = TypeVar("T")

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 10.0
# What may run on the event loop's thread (module docstring).
INLINE_MAX_OPS = 64
INLINE_MAX_ROWS = 256
# SQLite's own default is 1 000 WAL pages; a small transaction writes 5-20.
CHECKPOINT_EVERY = 100


def _connect(path: str, *, query_only: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_SECONDS,
        isolation_level=None,  # autocommit; transactions are explicit BEGIN ... COMMIT
        check_same_thread=False,  # used by one thread at a time; closed from another
        cached_statements=256,
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    if query_only:
        conn.execute("PRAGMA query_only = ON")
    else:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            conn.close()
            raise StorageError(f"could not put {path} in WAL mode (got {mode!r})")
        # Checkpoints run on their own thread, never inside an inline COMMIT (docstring).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _translate(e: sqlite3.IntegrityError) -> IntegrityError:
    name = getattr(e, "sqlite_errorname", "")
    if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
        return UniqueViolation(str(e))
    return IntegrityError(str(e))


# The functions below run on a database thread, never on the event loop.


def _fetch_all(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
    return conn.execute(sql, args).fetchall()


def _fetch_one(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Row | None:
    cursor = conn.execute(sql, args)
    try:
        row: Row | None = cursor.fetchone()
        return row
    finally:
        # An unfinished statement would keep this connection's read snapshot open, and
        # later reads on it would miss newer commits.
        cursor.close()


def _execute(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
    cursor = conn.execute(sql, args)
    try:
        return max(cursor.rowcount, 0)
    finally:
        cursor.close()


def _executemany(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    conn.executemany(sql, rows).close()


_Op = tuple[Callable[..., Any], str, Sequence[Any]]


def _small(ops: Sequence[_Op]) -> bool:
    """Whether these statements may run on the event loop's thread (module docstring)."""
    if len(ops) > INLINE_MAX_OPS:
        return False
    rows = 0
    for fn, _sql, args in ops:
        if fn is _executemany:
            rows += len(args)
    return rows <= INLINE_MAX_ROWS


def _run_ops(conn: sqlite3.Connection, ops: Sequence[_Op]) -> Any:
    """Run statements in order (the transaction's deferred ones, then the one whose
    answer is awaited); returns the last one's result."""
    result: Any = None
    for fn, sql, args in ops:
        result = fn(conn, sql, args)
    return result


def _begin_op(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> None:
    _begin(conn)


def _commit_op(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> None:
    conn.commit()


def _run_ops_and_commit(conn: sqlite3.Connection, ops: Sequence[_Op]) -> None:
    """A transaction's last job (ending with `_commit_op`): on any failure it rolls back
    here, so that the jobs queued behind it start from a clean connection."""
    try:
        _run_ops(conn, ops)
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


def _begin(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # Only reachable if a cancelled task left one behind: nobody owns it any more.
        conn.rollback()
    conn.execute("BEGIN IMMEDIATE")


async def _settle(future: asyncio.Future[T]) -> T:
    """Await a database job that must finish (commit, rollback) even if we are cancelled:
    wait for its outcome, then let the cancellation continue."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
            break
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class SqliteDatabase(Database):
    sql = SQLITE

    def __init__(self, path: str, readers: int, tempdir: str | None) -> None:
        self.path = path
        self._tempdir = tempdir
        self._writer_executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_executor = ThreadPoolExecutor(
            max(1, readers), thread_name_prefix="sqlite-reader"
        )
        self._writer: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # Jobs handed to the writer thread (counted by the event loop) and of those, the
        # ones finished (counted by the writer thread): equal means it is idle.
        self._submitted = 0
        self._finished = 0
        self._commits = 0  # since the last checkpoint
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpointing = False

    @classmethod
    async def open(cls, path: str, *, readers: int = 4) -> SqliteDatabase:
        """Open (creating if needed) the database file at ``path``; ``:memory:`` or ``""``
        opens a private temporary file that is deleted on close."""
        tempdir = None
        if path in ("", ":memory:"):
            tempdir = tempfile.mkdtemp(prefix="starling-sqlite-")
            path = str(Path(tempdir) / "starling.db")
        db = cls(path, readers, tempdir)
        try:
            db._writer = await db._on_writer_thread(
                functools.partial(_connect, path, query_only=False)
            )
        except BaseException:
            await db.close()
            raise
        return db

    # -- running jobs on the database threads

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("database is closed")

    def _submit_write(
        self, fn: Callable[..., T], *args: Any, inline: bool = False
    ) -> asyncio.Future[T]:
        """Run ``fn(writer connection, *args)``: here and now if ``inline`` is allowed and
        the writer thread is idle, else queued on the writer thread."""
        if inline and self._finished == self._submitted:
            done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            try:
                done.set_result(fn(self._writer, *args))
            except Exception as e:
                done.set_exception(e)
            return done
        self._submitted += 1
        return asyncio.wrap_future(self._writer_executor.submit(self._writer_job, fn, args))

    def _writer_job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._writer, *args)
        finally:
            self._finished += 1  # only this thread writes it

    def _committed(self, small: bool) -> None:
        """Count a commit; every CHECKPOINT_EVERY, and after any large transaction, start
        a checkpoint on the checkpoint thread (SQLite's automatic one is off)."""
        self._commits += 1
        if (small and self._commits < CHECKPOINT_EVERY) or self._closed or self._checkpointing:
            return
        self._commits = 0
        self._checkpointing = True
        job = asyncio.wrap_future(self._checkpointer.submit(self._checkpoint))
        job.add_done_callback(self._checkpoint_done)

    def _checkpoint(self) -> None:
        """Runs on the checkpoint thread."""
        if self._checkpoint_conn is None:
            # Not _connect: setting the journal mode may wait for the writer's lock. A
            # PASSIVE checkpoint never waits for anyone.
            self._checkpoint_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()

    def _checkpoint_done(self, job: asyncio.Future[None]) -> None:
        self._checkpointing = False
        if not job.cancelled() and job.exception() is not None:
            logger.warning("SQLite checkpoint failed: %s", job.exception())

    async def _on_writer_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._writer_executor.submit(fn))

    async def _write(self, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        try:
            return await self._submit_write(fn, *args, inline=inline)
        except sqlite3.IntegrityError as e:
            raise _translate(e) from e

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, query_only=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(
        self,
        fn: Callable[[sqlite3.Connection, str, Sequence[Any]], T],
        sql: str,
        args: Sequence[Any],
    ) -> T:
        self._check_open()

        def job() -> T:
            return fn(self._reader(), sql, args)

        return await asyncio.wrap_future(self._reader_executor.submit(job))

    # -- the Database API

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        return await self._read(_fetch_all, sql, args)

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        return await self._read(_fetch_one, sql, args)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._write_lock:
            self._check_open()
            # In autocommit mode a single statement is its own transaction. It may be
            # any size (cleanups delete by age), so it runs on the writer thread.
            count = await self._write(_execute, sql, args)
            self._committed(small=True)
            return count

    @asynccontextmanager
    async def transaction(self, *, heavy: bool = False) -> AsyncIterator[Transaction]:
        lock = self._write_lock
        await lock.acquire()
        locked = True
        try:
            self._check_open()
            assert self._writer is not None
            txn = SqliteTransaction(self, heavy)
            committed = False
            try:
                yield txn
                txn.active = False
                # BEGIN (if nothing ran yet), the deferred statements, COMMIT: one trip,
                # which rolls itself back if it fails. The next transaction may queue its
                # statements behind it now (see the module docstring).
                ops = txn._take((_commit_op, "", ()))
                small = txn._small(ops)
                job = self._submit_write(_run_ops_and_commit, ops, inline=small)
                lock.release()
                locked = False
                try:
                    await _settle(job)
                except sqlite3.IntegrityError as e:  # deferred statements or constraints
                    raise _translate(e) from e
                committed = True
                self._committed(small=not txn.large)  # large: some trip was not small
            finally:
                txn.active = False
                if not committed:
                    txn._pending.clear()
                    if locked:  # the block itself failed: nothing was handed over yet
                        rollback = self._submit_write(sqlite3.Connection.rollback, inline=not heavy)
                        await _settle(rollback)
                txn._finish(committed)
        finally:
            if locked:
                lock.release()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Let a running transaction finish; new ones are refused by _check_open.
        async with self._write_lock:
            await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        """Runs on a helper thread: drain the executors, close every connection (the
        writer last: the last connection to close checkpoints and removes the WAL)."""
        self._reader_executor.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
        if self._writer is not None:
            writer = self._writer
            self._writer_executor.submit(writer.close).result()
            self._writer = None
        self._writer_executor.shutdown(wait=True)
        for conn in self._readers:
            conn.close()
        self._readers.clear()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)


class SqliteTransaction(Transaction):
    sql = SQLITE

    def __init__(self, db: SqliteDatabase, heavy: bool) -> None:
        super().__init__()
        self._db = db
        self._heavy = heavy
        # Whether an earlier trip of this transaction was too large to run inline: its
        # commit then counts as large (a checkpoint follows).
        self.large = heavy
        # Statements not run yet (BEGIN first): they go to the writer thread with the next
        # statement whose answer is awaited, or with the commit.
        self._pending: list[_Op] = [(_begin_op, "", ())]

    def _take(self, op: _Op) -> list[_Op]:
        ops = self._pending
        ops.append(op)
        self._pending = []
        return ops

    def _small(self, ops: Sequence[_Op]) -> bool:
        """Whether this trip may run on the event loop's thread (module docstring)."""
        small = not self._heavy and _small(ops)
        self.large |= not small
        return small

    async def _trip(self, op: _Op) -> Any:
        ops = self._take(op)
        return await self._db._write(_run_ops, ops, inline=self._small(ops))

    def _check(self) -> None:
        if not self.active:
            raise StorageError("transaction used outside its `async with` block")

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        self._check()
        rows: list[Row] = await self._trip((_fetch_all, sql, args))
        return rows

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        self._check()
        row: Row | None = await self._trip((_fetch_one, sql, args))
        return row

    async def execute(self, sql: str, *args: Any) -> int:
        self._check()
        count: int = await self._trip((_execute, sql, args))
        return count

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._check()
        # Materialise here: a generator must not run on the database thread. Deferred
        # until the next statement that answers, or the commit.
        batch = rows if isinstance(rows, list | tuple) else list(rows)
        self._pending.append((_executemany, sql, batch))

    async def queue(self, sql: str, *args: Any) -> None:
        self._check()
        self._pending.append((_execute, sql, args))
