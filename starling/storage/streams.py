"""Stream positions (DESIGN §5): monotonically increasing ids for append-only logs.

A :class:`StreamIdGenerator` hands out positions for one named stream inside write
transactions, and knows the stream's *current position*: the highest position P such that
every position <= P has finished (committed or rolled back). Readers (sync, the federation
sender...) read up to ``current_position()``, so a slow transaction holding position 5 never
lets a reader skip past it after position 6 commits.

One process writes each stream (DESIGN: one writer process), so the bookkeeping lives in
memory; only the high-water mark is persisted, for restarts:

- SQLite: all writes are serialised, so the next id is ``last + 1`` in memory and the
  ``stream_positions`` row is updated in the same transaction. A rollback hands the ids
  back, keeping memory and the row equal.
- PostgreSQL: transactions run concurrently, so ids come from a sequence
  (``stream_seq_<name>``, created on first use), which never takes a row lock; a rolled-back
  id leaves a gap, which readers do not mind.

Create one generator per stream per process, at start, with :meth:`StreamIdGenerator.create`.
"""

from __future__ import annotations

import asyncio
import re

from starling.storage.database import Database, StorageError, Transaction

_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}\Z")


class StreamIdGenerator:
    def __init__(self, db: Database, name: str, last: int) -> None:
        self.name = name
        self._dialect = db.dialect
        self._last = last
        # Ids handed out and not yet finished, in increasing order (dicts keep insertion
        # order and ids are allocated in increasing order), so the first key is the least.
        self._unfinished: dict[int, None] = {}
        self._allocate_lock = asyncio.Lock()
        self._sequence = f"stream_seq_{name}"

    @classmethod
    async def create(cls, db: Database, name: str) -> StreamIdGenerator:
        """Load (or start at 0) the stream ``name`` (lowercase letters, digits, ``_``)."""
        if not _STREAM_NAME.match(name):
            raise ValueError(f"invalid stream name {name!r}")
        if db.dialect == "postgres":
            sequence = f"stream_seq_{name}"
            async with db.transaction() as txn:
                await txn.execute(f"CREATE SEQUENCE IF NOT EXISTS {sequence} MINVALUE 1")
                row = await txn.fetch_one(f"SELECT last_value, is_called FROM {sequence}")
            assert row is not None
            last = int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1
        else:
            async with db.transaction() as txn:
                await txn.execute(
                    "INSERT INTO stream_positions (stream_name, position) VALUES (?, 0)"
                    " ON CONFLICT (stream_name) DO NOTHING",
                    name,
                )
                last = int(
                    await txn.fetch_val(
                        "SELECT position FROM stream_positions WHERE stream_name = ?", name
                    )
                )
        return cls(db, name, last)

    def current_position(self) -> int:
        """The highest position up to which every write has finished."""
        for first_unfinished in self._unfinished:
            return first_unfinished - 1
        return self._last

    async def next_id(self, txn: Transaction) -> int:
        """One new position, to be written by ``txn``."""
        return (await self.next_ids(txn, 1))[0]

    async def next_ids(self, txn: Transaction, count: int) -> list[int]:
        """``count`` new increasing positions, to be written by ``txn``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if not txn.active:
            # Its callbacks would never run, and the id would hold the stream back forever.
            raise StorageError("stream ids must be allocated inside an open transaction")
        if self._dialect == "postgres":
            # The lock keeps registration in the same order as the sequence hands out ids.
            async with self._allocate_lock:
                rows = await txn.fetch_all(
                    f"SELECT nextval('{self._sequence}') FROM generate_series(1, ?)", count
                )
                ids = sorted(int(row[0]) for row in rows)
                self._register(txn, ids)
        else:
            # No await between reading and advancing _last: the SQLite writer is serialised
            # anyway, and this keeps the allocation atomic on the event loop.
            ids = list(range(self._last + 1, self._last + count + 1))
            self._register(txn, ids)
            await txn.queue(
                "UPDATE stream_positions SET position = ? WHERE stream_name = ?",
                ids[-1],
                self.name,
            )
        return ids

    def _register(self, txn: Transaction, ids: list[int]) -> None:
        self._last = max(self._last, ids[-1])
        for i in ids:
            self._unfinished[i] = None

        def finished() -> None:
            for i in ids:
                self._unfinished.pop(i, None)

        def rolled_back() -> None:
            finished()
            if self._dialect == "sqlite":
                # Every later id came from this same transaction (one writer), and the
                # stream_positions row rolled back with it: hand them all back.
                self._last = min(self._last, ids[0] - 1)

        txn.call_after_commit(finished)
        txn.call_on_rollback(rolled_back)
