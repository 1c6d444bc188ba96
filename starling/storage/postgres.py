"""The PostgreSQL engine: an asyncpg connection pool.

Each ``transaction()`` holds one pooled connection for its whole block; reads and single
writes outside transactions borrow any connection for one statement. ``?`` placeholders
are rewritten to ``$n`` (cached per SQL string) and asyncpg caches the prepared statements
per connection.

Also here: :func:`create_database` / :func:`drop_database`, used by tests and by
``starling`` setup commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import asyncpg

from starling.storage.database import (
    Database,
    IntegrityError,
    Row,
    StorageError,
    Transaction,
    UniqueViolation,
)
from starling.storage.dialect import POSTGRES, split_placeholders, to_dollar_params

T = TypeVar("T")

STATEMENT_CACHE_SIZE = 512

# Set while a task holds a transaction's connection. A statement through the pool from
# there waits for a second connection: enough such tasks at once exhaust the pool and
# wait for ever (createRoom did, #20). Tests check it (`pool_in_transaction`).
_in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "starling_pg_in_transaction", default=False
)


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release beyond asyncpg's own ROLLBACK of a
    transaction left open: nothing. Pooled connections hold no session state (no SET,
    LISTEN, cursors or session advisory locks: those live on `SessionLocks`' own
    connections). asyncpg's default reset query (unlock all, close all, unlisten, reset
    all) is a round trip that every pooled statement and transaction waited for."""


def _rowcount(status: str) -> int:
    """Rows changed, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except asyncpg.UniqueViolationError as e:
        raise UniqueViolation(str(e)) from e
    except asyncpg.IntegrityConstraintViolationError as e:
        raise IntegrityError(str(e)) from e


class PostgresDatabase(Database):
    sql = POSTGRES

    def __init__(self, pool: asyncpg.Pool, dsn: str = "") -> None:
        self._pool = pool
        self._dsn = dsn
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min(min_size, max_size),
                max_size=max_size,
                statement_cache_size=STATEMENT_CACHE_SIZE,
                reset=_release_as_is,
            )
        except (OSError, asyncpg.PostgresError) as e:
            raise StorageError(f"cannot connect to PostgreSQL at {_redact(dsn)}: {e}") from e
        return cls(pool, dsn)

    # Tests set this: a pooled statement from inside a transaction warns ("warn") or
    # raises ("raise") instead of risking the pool (see `_in_transaction`).
    pool_in_transaction: Literal["allow", "warn", "raise"] = "allow"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("database is closed")

    def _check_pool_use(self) -> None:
        self._check_open()
        if self.pool_in_transaction != "allow" and _in_transaction.get():
            message = "a pooled statement inside a transaction: use the transaction"
            if self.pool_in_transaction == "raise":
                raise StorageError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        self._check_pool_use()
        rows: list[Row] = await _translated(self._pool.fetch(to_dollar_params(sql), *args))
        return rows

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        self._check_pool_use()
        row: Row | None = await _translated(self._pool.fetchrow(to_dollar_params(sql), *args))
        return row

    async def execute(self, sql: str, *args: Any) -> int:
        self._check_pool_use()
        status = await _translated(self._pool.execute(to_dollar_params(sql), *args))
        return _rowcount(status)

    @asynccontextmanager
    async def transaction(self, *, heavy: bool = False) -> AsyncIterator[Transaction]:
        # `heavy` matters only to SQLite (storage/database.py): every statement here runs
        # on the PostgreSQL server, never on the event loop.
        self._check_pool_use()
        async with self._pool.acquire() as conn:
            token = _in_transaction.set(True)
            txn = PostgresTransaction(conn)
            committed = False
            try:
                yield txn
                txn.active = False
                # BEGIN if not sent yet, the deferred statements and COMMIT: one trip
                # (none for a block that ran nothing).
                await txn._flush(commit=True)
                committed = True
            finally:
                txn.active = False
                if not committed and not conn.is_closed() and conn.is_in_transaction():
                    # Anything else broken is dealt with by the pool on release.
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                        await conn.execute("ROLLBACK")
                # Callbacks (and tasks they start) run outside the transaction.
                _in_transaction.reset(token)
                txn._finish(committed)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def session_locks(self) -> SessionLocks:
        """Advisory locks held across transactions, on a connection of their own (see
        SessionLocks). The caller closes it."""
        self._check_open()
        # Not a pooled connection: the pool's reset on release would drop the locks, and
        # an exhausted pool must never block an unlock.
        try:
            conn = await asyncpg.connect(self._dsn)
        except (OSError, asyncpg.PostgresError) as e:
            raise StorageError(f"cannot connect to PostgreSQL at {_redact(self._dsn)}: {e}") from e
        # A frozen process must not hold its locks for ever: PostgreSQL ends this session
        # after a minute without a statement (PostgreSQL 14+; the owner pings it well
        # within that while the process runs).
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute(f"SET idle_session_timeout = '{SESSION_IDLE_TIMEOUT_S}s'")
        return SessionLocks(conn)


SESSION_IDLE_TIMEOUT_S = 60


class SessionLocks:
    """PostgreSQL session-level advisory locks on one dedicated connection: what keeps two
    processes from writing one room at once (rooms/locks.py). Only `try_lock` is offered
    (a blocking pg_advisory_lock would stall every other lock on this connection); the
    caller polls. If the connection dies, PostgreSQL has released every lock it held, and
    `lost` is set so that holders can tell."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._io = asyncio.Lock()  # one statement at a time on the connection
        self.lost = False

    async def try_lock(self, classid: int, objid: int) -> bool:
        """Take the lock if free; StorageError if the session is gone."""
        async with self._io:
            try:
                got = await self._conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", classid, objid
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
                self.lost = True
                raise StorageError(f"advisory lock session lost: {e}") from e
        return bool(got)

    async def ping(self) -> None:
        """Keep the session from timing out; StorageError if it is gone."""
        async with self._io:
            try:
                await self._conn.fetchval("SELECT 1")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
                self.lost = True
                raise StorageError(f"advisory lock session lost: {e}") from e

    async def unlock(self, classid: int, objid: int) -> None:
        async with self._io:
            try:
                await self._conn.fetchval("SELECT pg_advisory_unlock($1, $2)", classid, objid)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                self.lost = True  # the session is gone, and its locks with it

    async def close(self) -> None:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await self._conn.close()


class PostgresTransaction(Transaction):
    """Statements whose answer nobody awaits (`queue`, `executemany`) wait, with their
    parameters written into the SQL as literals (`_literal`), and go to the server in one
    simple-protocol message together with the next statement that must run (before it)
    or with the COMMIT; BEGIN goes with the first of them. PostgreSQL runs such a message's
    statements in order, each seeing the ones before, and stops at the first error (the
    transaction is then aborted and rolled back), so this is the same as running them
    one by one, in fewer round trips. A statement whose parameters cannot be written as
    literals (floats, bytes...: see `_literal`) runs as before, after the
    waiting ones are sent."""

    sql = POSTGRES

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self._conn = conn
        self._pending: list[str] = ["BEGIN"]
        self._begun = False

    def _check(self) -> None:
        if not self.active:
            raise StorageError("transaction used outside its `async with` block")

    async def _flush(self, *, commit: bool = False) -> None:
        """Send the waiting statements (and COMMIT) in one message."""
        script = self._pending
        self._pending = []
        if commit:
            if not self._begun and script == ["BEGIN"]:
                return  # nothing ran: nothing to commit
            script.append("COMMIT")
        elif not script:
            return
        self._begun = True
        await _translated(self._conn.execute(";\n".join(script)))

    async def _run(self, method: Callable[..., Awaitable[T]], sql: str, *args: Any) -> T:
        self._check()
        if self._pending:
            await self._flush()
        return await _translated(method(to_dollar_params(sql), *args))

    async def fetch_all(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._run(self._conn.fetch, sql, *args)
        return rows

    async def fetch_one(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._run(self._conn.fetchrow, sql, *args)
        return row

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._run(self._conn.execute, sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._check()
        batch = rows if isinstance(rows, list | tuple) else list(rows)
        inlined = [_inline(sql, row) for row in batch]
        if all(s is not None for s in inlined):
            self._pending.extend(s for s in inlined if s is not None)
        elif batch:
            await self._run(self._conn.executemany, sql, batch)

    async def queue(self, sql: str, *args: Any) -> None:
        self._check()
        inlined = _inline(sql, args)
        if inlined is None:
            await self.execute(sql, *args)
        else:
            self._pending.append(inlined)


def _inline(sql: str, args: Sequence[Any]) -> str | None:
    """`sql` with its ``?`` placeholders replaced by `args` as SQL literals, or None if
    one of them has no literal form here."""
    parts = split_placeholders(sql)
    if len(parts) != len(args) + 1:
        return None  # let the server say what is wrong, as for any statement
    out = [parts[0]]
    for arg, part in zip(args, parts[1:], strict=True):
        literal = _literal(arg)
        if literal is None:
            return None
        out.append(literal)
        out.append(part)
    return "".join(out)


def _literal(value: Any) -> str | None:
    """A parameter as an SQL literal that the server reads back as exactly that value,
    whatever the setting of standard_conforming_strings, or None (floats, bytes, NUL
    characters...: no literal form here, the statement runs with parameters instead).
    A string literal is untyped, so it takes the column's type as a parameter would."""
    if value is None:
        return "NULL"
    if value is True:
        return "TRUE"
    if value is False:
        return "FALSE"
    if type(value) is int:
        # In parentheses when negative: "x - -1" would start a comment.
        return str(value) if value >= 0 else f"({value})"
    if type(value) is str:
        if "\x00" in value:
            return None  # the server refuses it as a parameter; let it say so
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if type(value) is list or type(value) is tuple:
        # An untyped array literal ('{...}'): like a parameter, it takes the type the
        # context gives it (`col = ANY(?)`: an array of the column's type).
        elements = []
        for element in value:
            if type(element) is int:
                elements.append(str(element))
            elif type(element) is str and "\x00" not in element:
                quoted = element.replace("\\", "\\\\").replace('"', '\\"')
                elements.append(f'"{quoted}"')
            else:
                return None
        return _literal("{" + ",".join(elements) + "}")
    return None


# -- creating and dropping databases (tests, setup commands)

_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def _redact(dsn: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def dsn_with_database(dsn: str, name: str) -> str:
    """The same server and credentials as ``dsn``, database ``name``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path="/" + name))


def _check_name(name: str) -> None:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r}")


async def create_database(admin_dsn: str, name: str, *, connect_timeout: float = 10.0) -> str:
    """Create database ``name`` (UTF-8, C collation) through ``admin_dsn``; return the DSN
    to open it."""
    _check_name(name)
    conn = await asyncpg.connect(admin_dsn, timeout=connect_timeout)
    try:
        await conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        )
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str, *, connect_timeout: float = 10.0) -> None:
    """Drop database ``name`` (if it exists), disconnecting anyone still using it."""
    _check_name(name)
    conn = await asyncpg.connect(admin_dsn, timeout=connect_timeout)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
