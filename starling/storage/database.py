"""The one async database API every store codes against, and :func:`open_database`.

Two engines implement it: :mod:`starling.storage.sqlite` (stdlib sqlite3, one writer
thread, a pool of reader threads) and :mod:`starling.storage.postgres` (asyncpg pool).
SQL is written once with ``?`` placeholders; see :mod:`starling.storage.dialect` for the
few differences.

Semantics both engines share:

- ``Database.fetch_*`` read committed data outside any transaction (SQLite: a reader
  connection; PostgreSQL: any pooled connection). A read issued after a write has returned
  sees that write.
  They are for reads only: on SQLite they run on read-only connections, so a write (even
  ``INSERT ... RETURNING``) must go through ``execute`` or a transaction.
- ``Database.execute`` is one write in its own transaction.
- ``Database.transaction()`` is a block of statements committed on a clean exit and rolled
  back on an exception. On SQLite all write transactions are serialised (one writer). On
  PostgreSQL they run concurrently at READ COMMITTED: use atomic statements
  (``SET n = n + 1``, upserts, ``RETURNING``) or ``SELECT ... {txn.sql.for_update}`` for
  read-modify-write.
- Rows support ``row[0]`` and ``row["column"]``, ``len(row)``, iteration over values and
  ``row.keys()``. Compare with ``tuple(row)``; do not rely on ``row == (...)``.
- Constraint violations raise :class:`UniqueViolation` / :class:`IntegrityError` on both
  engines. On PostgreSQL a failed statement aborts the surrounding transaction, so catch
  them around a whole ``transaction()`` (or a single ``execute``), not inside one.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from starling.errors import ConflictError
from starling.storage.dialect import Dialect, DialectName


class Row(Protocol):
    """A result row: sqlite3.Row on SQLite, asyncpg.Record on PostgreSQL (both C types, no
    copying). Index by position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def keys(self) -> Any: ...


class StorageError(Exception):
    """Base class for errors raised by the storage layer."""


class IntegrityError(StorageError):
    """A constraint (foreign key, NOT NULL, CHECK, unique) was violated."""


class UniqueViolation(IntegrityError, ConflictError):
    """A unique or primary-key constraint was violated."""


class SchemaTooNewError(StorageError):
    """The database was migrated by a newer Starling than this one."""


class Transaction(abc.ABC):
    """Statements inside one database transaction. Obtain with ``db.transaction()``."""

    sql: Dialect

    def __init__(self) -> None:
        self.active = True  # False once the `async with` block has ended
        self._after_commit: list[Callable[[], None]] = []
        self._on_rollback: list[Callable[[], None]] = []

    @property
    def dialect(self) -> DialectName:
        return self.sql.name

    @abc.abstractmethod
    async def fetch_all(self, sql: str, *args: Any) -> list[Row]: ...

    @abc.abstractmethod
    async def fetch_one(self, sql: str, *args: Any) -> Row | None: ...

    async def fetch_val(self, sql: str, *args: Any) -> Any:
        row = await self.fetch_one(sql, *args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed (0 for DDL)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row, batched. An engine may run it
        later, together with the next statement that returns something or the commit
        (both do: SQLite in one trip to the writer thread, PostgreSQL in one message);
        a failure then surfaces there, still inside the transaction."""

    async def queue(self, sql: str, *args: Any) -> None:
        """`execute` for a statement whose row count nobody needs; an engine may run it
        later, as `executemany` says."""
        await self.execute(sql, *args)

    def call_after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronously, on the event loop) once this transaction has
        committed — e.g. to wake the notifier. Not run on rollback."""
        self._after_commit.append(callback)

    def call_on_rollback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` if this transaction is rolled back."""
        self._on_rollback.append(callback)

    def _finish(self, committed: bool) -> None:
        callbacks = self._after_commit if committed else self._on_rollback
        self._after_commit = []
        self._on_rollback = []
        for callback in callbacks:
            callback()


class Database(abc.ABC):
    """A connection pool to one Starling database. Create with :func:`open_database`."""

    sql: Dialect

    @property
    def dialect(self) -> DialectName:
        return self.sql.name

    @abc.abstractmethod
    async def fetch_all(self, sql: str, *args: Any) -> list[Row]: ...

    @abc.abstractmethod
    async def fetch_one(self, sql: str, *args: Any) -> Row | None: ...

    async def fetch_val(self, sql: str, *args: Any) -> Any:
        """First column of the first row, or None when there is no row."""
        row = await self.fetch_one(sql, *args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """One write in its own transaction; return the number of rows it changed."""

    @abc.abstractmethod
    def transaction(self, *, heavy: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as txn:`` — commit on exit, rollback on error.

        ``heavy``: its statements may scan or delete many rows (purges, migrations, a
        port). SQLite then keeps it off the event loop's thread, where it runs small
        writes (storage/sqlite.py); PostgreSQL runs every statement on the server anyway."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Wait for running work, then close every connection. Idempotent."""


@dataclasses.dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """Where the database is and how big its pools are.

    ``url``: ``postgresql://user@host:port/dbname`` (or ``postgres://``), ``sqlite:///path``,
    a plain file path, or ``:memory:`` (a private temporary file, deleted on close).
    """

    url: str
    pool_min_size: int = 2
    """PostgreSQL: connections opened at start."""
    pool_max_size: int = 10
    """PostgreSQL: most connections at once."""
    sqlite_readers: int = 4
    """SQLite: reader connections (threads) used by fetches outside transactions."""

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> str:
        # sqlite:///abs/path -> /abs/path; sqlite:rel/path -> rel/path; else a plain path.
        if self.url.startswith("sqlite:"):
            rest = self.url.removeprefix("sqlite:")
            return rest.removeprefix("//") if rest.startswith("//") else rest
        return self.url


async def open_database(
    url_or_config: str | os.PathLike[str] | DatabaseConfig,
    *,
    migrate: bool = True,
) -> Database:
    """Open the database, and (unless ``migrate=False``) bring its schema up to date.

    Raises :class:`SchemaTooNewError` if the database has migrations this code does not know.
    """
    from starling.storage.migrator import apply_migrations

    config = (
        url_or_config
        if isinstance(url_or_config, DatabaseConfig)
        else DatabaseConfig(url=os.fspath(url_or_config))
    )
    db: Database
    if config.is_postgres:
        from starling.storage.postgres import PostgresDatabase

        db = await PostgresDatabase.open(
            config.url, min_size=config.pool_min_size, max_size=config.pool_max_size
        )
    else:
        from starling.storage.sqlite import SqliteDatabase

        db = await SqliteDatabase.open(config.sqlite_path, readers=config.sqlite_readers)
    if migrate:
        try:
            await apply_migrations(db)
        except BaseException:
            await db.close()
            raise
    return db
