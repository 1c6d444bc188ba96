"""Keys of SQLite's AUTOINCREMENT tables handed out in memory, so that an INSERT need not
come back with ``RETURNING`` before the transaction can go on.

On SQLite every write is serialised through one writer in one process (as the stream
positions of streams.py assume), so the next key is ``last + 1``: the INSERT can then be
queued with the transaction's other statements and sent with its COMMIT, one trip to the
writer thread instead of two (benchmarks/hot_paths.py counts them). ``last`` is read once
per process, inside the first transaction that needs it, as the larger of the column's
maximum and ``sqlite_sequence`` (AUTOINCREMENT never reuses the key of a deleted row, and
an explicit key above the sequence moves it up). A rolled-back key is handed back unless
a later one was handed out meanwhile (a commit is pipelined, sqlite.py): then it is a gap,
as with AUTOINCREMENT itself.

Every INSERT into such a table must take its key here once the allocator is used, or the
two would hand out the same key. On PostgreSQL `allocate` returns None: the caller lets
the identity column choose (and reads it with RETURNING; statements are not deferred
there anyway).
"""

from __future__ import annotations

import re
import weakref

from starling.storage.database import Database, Transaction

_NAME = re.compile(r"^[a-z_]+\Z")

_ALLOCATORS: weakref.WeakKeyDictionary[Database, dict[tuple[str, str], RowIds]] = (
    weakref.WeakKeyDictionary()
)


def row_ids(db: Database, table: str, column: str) -> RowIds:
    """The allocator of `table`.`column` for `db` (one per database, shared by every
    store of it)."""
    per_db = _ALLOCATORS.setdefault(db, {})
    key = (table, column)
    found = per_db.get(key)
    if found is None:
        found = per_db[key] = RowIds(table, column)
    return found


class RowIds:
    def __init__(self, table: str, column: str) -> None:
        if not (_NAME.match(table) and _NAME.match(column)):
            raise ValueError(f"invalid table or column {table!r}.{column!r}")
        self._table = table
        self._column = column
        self._last: int | None = None

    async def allocate(self, txn: Transaction, count: int = 1) -> list[int] | None:
        """`count` new increasing keys for rows `txn` inserts (SQLite), or None
        (PostgreSQL: let the database choose)."""
        if txn.dialect != "sqlite":
            return None
        if count < 1:
            raise ValueError("count must be at least 1")
        if self._last is None:
            # The writer lock is held: no other transaction allocates while this reads.
            last = await txn.fetch_val(
                f"SELECT max(coalesce((SELECT max({self._column}) FROM {self._table}), 0),"
                " coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0))",
                self._table,
            )
            self._last = int(last or 0)
        first = self._last + 1
        self._last += count
        keys = list(range(first, first + count))

        def rolled_back() -> None:
            if self._last == keys[-1]:
                self._last = first - 1

        txn.call_on_rollback(rolled_back)
        return keys
