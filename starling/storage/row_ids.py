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
two would hand out the same key. On PostgreSQL the keys come from the identity column's
own sequence, reserved `RESERVE_BLOCK` at a time (one round trip per block, inside the
transaction that needs the first of them), so those INSERTs are deferred there too
(postgres.py) instead of coming back with RETURNING; other INSERTs may let the column
choose, from the same sequence. Keys are increasing per process, not across processes;
unused reserved keys are a gap.
"""

from __future__ import annotations

import asyncio
import re
import weakref

from starling.storage.database import Database, Transaction

_NAME = re.compile(r"^[a-z_]+\Z")
# PostgreSQL: keys reserved from the sequence per round trip.
RESERVE_BLOCK = 64

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
        # PostgreSQL: keys taken from the sequence, not handed out yet.
        self._reserved: list[int] = []
        self._reserving = asyncio.Lock()

    async def _reserve(self, txn: Transaction, count: int) -> None:
        async with self._reserving:
            if len(self._reserved) >= count:
                return  # another allocation reserved meanwhile
            want = max(count - len(self._reserved), RESERVE_BLOCK)
            rows = await txn.fetch_all(
                "SELECT nextval(pg_get_serial_sequence(?, ?)) FROM generate_series(1, ?)",
                self._table,
                self._column,
                want,
            )
            self._reserved.extend(sorted(int(row[0]) for row in rows))

    async def allocate(self, txn: Transaction, count: int = 1) -> list[int]:
        """`count` new increasing keys for rows `txn` inserts."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if txn.dialect != "sqlite":
            while len(self._reserved) < count:
                await self._reserve(txn, count)
            keys = self._reserved[:count]
            del self._reserved[:count]
            return keys
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
