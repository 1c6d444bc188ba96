"""Stream positions (DESIGN §5): monotonically increasing ids for append-only logs.

A :class:`StreamIdGenerator` hands out positions for one named stream inside write
transactions, and knows the stream's *current position*: the highest position P such that
every position <= P has finished (committed or rolled back). Readers (sync, the federation
sender...) read up to ``current_position()``, so a slow transaction holding position 5 never
lets a reader skip past it after position 6 commits.

Within one process the bookkeeping lives in memory; only the high-water mark is
persisted, for restarts:

- SQLite: all writes are serialised, so the next id is ``last + 1`` in memory and the
  ``stream_positions`` row is updated in the same transaction. A rollback hands the ids
  back, keeping memory and the row equal — unless a later transaction has allocated
  meanwhile (its statements queue behind a pipelined COMMIT that may still fail): then
  they are a gap, which readers do not mind.
- PostgreSQL: transactions run concurrently, so ids come from a sequence
  (``stream_seq_<name>``, created on first use), which never takes a row lock; a rolled-back
  id leaves a gap, which readers do not mind.

Create one generator per stream per process, at start, with :meth:`StreamIdGenerator.create`.

Several processes (workers, docs/scaling.md) write the same streams on PostgreSQL. Then
:meth:`StreamIdGenerator.use_cluster` makes every allocation take the stream's
transaction-scoped advisory lock before ``nextval``: positions of one stream are committed
in the order they were handed out, cluster-wide, at the price of one writer at a time per
stream between its allocation and its commit. That is what makes the rule hold across
processes with no bookkeeping of other writers: a committed position P means every lower
position has finished (committed or rolled back), so a reader may move to any position it
has been told was committed *and whose news (cache invalidations, change records) it has
applied*. So each commit is a link of a chain: under the lock the writer reads the
stream's last committed position from ``stream_positions`` (the row it then updates to
its own), and publishes (name, previous, position) through the cluster bus. Every
process, the writer included, moves its visible position along the chain only
(:meth:`advance`): position P becomes visible once the link ending at the commit before
it has been applied, so a process never shows P while another process's earlier commit
is still on its way over Redis (rolled-back positions are never links, so they hold
nobody up). A chain that stays broken (a lost message) is noticed (`stalled_for`) and the
process re-reads (`reload`). A crashed writer's transaction is rolled back by
PostgreSQL, which releases the lock: nobody waits for it.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
import zlib
from collections.abc import Callable

from starling.storage.database import Database, StorageError, Transaction

_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}\Z")

# pg_advisory_xact_lock(classid, objid): the class of stream locks (room locks use another).
STREAM_LOCK_CLASS = 0x53545231
# PostgreSQL, one process: positions reserved from the sequence per round trip.
RESERVE_BLOCK = 64


# Every generator created per database, so that workers can switch them all to cluster mode.
_GENERATORS: weakref.WeakKeyDictionary[Database, list[StreamIdGenerator]] = (
    weakref.WeakKeyDictionary()
)


def generators_of(db: Database) -> list[StreamIdGenerator]:
    """The stream generators created on `db` in this process."""
    return list(_GENERATORS.get(db, []))


def advisory_key(name: str) -> int:
    """A stable signed 32-bit key for a name (a collision only serialises more)."""
    return zlib.crc32(name.encode()) - 2**31


class StreamIdGenerator:
    def __init__(self, db: Database, name: str, last: int) -> None:
        self.name = name
        self._dialect = db.dialect
        self._last = last
        # Ids handed out and not yet finished, in increasing order (dicts keep insertion
        # order and ids are allocated in increasing order), so the first key is the least.
        self._unfinished: dict[int, None] = {}
        self._allocate_lock = asyncio.Lock()
        # PostgreSQL, one process: positions reserved from the sequence, not handed out yet.
        self._reserved: list[int] = []
        self._sequence = f"stream_seq_{name}"
        # Set by use_cluster: other processes write this stream too.
        self._publish: Callable[[str, int, int], None] | None = None
        # Cluster mode: the end of the chain of commits applied here (the visible
        # position), and links heard ahead of it: previous -> position.
        self._committed = last
        self._ahead: dict[int, int] = {}
        self._ahead_since: float | None = None

    @classmethod
    async def create(cls, db: Database, name: str) -> StreamIdGenerator:
        """Load (or start at 0) the stream ``name`` (lowercase letters, digits, ``_``)."""
        if not _STREAM_NAME.match(name):
            raise ValueError(f"invalid stream name {name!r}")
        if db.dialect == "postgres":
            sequence = f"stream_seq_{name}"
            async with db.transaction() as txn:
                # IF NOT EXISTS is not safe against another process creating it at the
                # same moment (workers starting together): serialise on the stream's lock.
                await txn.execute(
                    "SELECT pg_advisory_xact_lock(?, ?)", STREAM_LOCK_CLASS, advisory_key(name)
                )
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
        generator = cls(db, name, last)
        _GENERATORS.setdefault(db, []).append(generator)
        return generator

    async def use_cluster(self, db: Database, publish: Callable[[str, int, int], None]) -> None:
        """Other processes write this stream too (PostgreSQL only): serialise allocation
        to commit through the advisory lock, and `publish(name, previous, position)` each
        commit. The start position is read under the lock (see `reload`)."""
        if self._dialect != "postgres":
            raise StorageError("several processes need PostgreSQL")
        async with db.transaction() as txn:
            await txn.execute(
                "SELECT pg_advisory_xact_lock(?, ?)", STREAM_LOCK_CLASS, advisory_key(self.name)
            )
            # The chain starts at what the sequence has handed out (every one of those
            # has finished: the lock is ours), never below what the row already says.
            row = await txn.fetch_one(f"SELECT last_value, is_called FROM {self._sequence}")
            assert row is not None
            handed_out = int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1
            await txn.execute(
                "INSERT INTO stream_positions (stream_name, position) VALUES (?, ?)"
                " ON CONFLICT (stream_name) DO UPDATE SET position ="
                " GREATEST(stream_positions.position, excluded.position)",
                self.name,
                handed_out,
            )
        self._publish = publish
        self._reserved.clear()  # below what other processes take from now on
        self._committed = -1
        await self.reload(db)

    @property
    def clustered(self) -> bool:
        """Whether `use_cluster` has been called (other processes write this stream)."""
        return self._publish is not None

    def advance(self, previous: int, position: int) -> None:
        """A commit (here or in another process) whose news has been applied here: the
        link previous -> position of the chain (cluster mode)."""
        if position > self._committed:
            self._ahead[previous] = position
        while self._committed in self._ahead:
            self._committed = self._ahead.pop(self._committed)
        self._last = max(self._last, self._committed)
        for stale in [p for p in self._ahead if p < self._committed]:
            del self._ahead[stale]
        self._ahead_since = (self._ahead_since or time.monotonic()) if self._ahead else None

    def stalled_for(self) -> float:
        """Seconds that links have been waiting for a missing one (0: none waiting)."""
        return 0.0 if self._ahead_since is None else time.monotonic() - self._ahead_since

    async def reload(self, db: Database) -> None:
        """Re-read the chain's end from the database (cluster mode: at start, and after
        the bus lost messages): the shared lock waits for the writer in flight, if any."""
        async with db.transaction() as txn:
            await txn.execute(
                "SELECT pg_advisory_xact_lock_shared(?, ?)",
                STREAM_LOCK_CLASS,
                advisory_key(self.name),
            )
            position = int(
                await txn.fetch_val(
                    "SELECT position FROM stream_positions WHERE stream_name = ?", self.name
                )
            )
        if position > self._committed:
            self._committed = position
            self._ahead_since = None
        self.advance(self._committed, self._committed)  # follow links heard meanwhile

    def current_position(self) -> int:
        """The highest position up to which every write has finished."""
        if self._publish is not None:
            return self._committed
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
        previous: int | None = None
        if self._publish is not None:
            # Held until this transaction ends; taken outside _allocate_lock so that a
            # transaction waiting for another process never blocks this one's own second
            # allocation (the lock is re-entrant within the transaction).
            await txn.execute(
                "SELECT pg_advisory_xact_lock(?, ?)", STREAM_LOCK_CLASS, advisory_key(self.name)
            )
            previous = int(
                await txn.fetch_val(
                    "SELECT position FROM stream_positions WHERE stream_name = ?", self.name
                )
            )
        if self._dialect == "postgres" and self._publish is None:
            # One process writes the stream: positions come from a block reserved from
            # the sequence ahead (`_reserve`), handed out without a round trip.
            while len(self._reserved) < count:
                await self._reserve(txn, count)
            ids = self._reserved[:count]
            del self._reserved[:count]
            self._register(txn, ids)
        elif self._dialect == "postgres":
            # The lock keeps registration in the same order as the sequence hands out ids.
            async with self._allocate_lock:
                rows = await txn.fetch_all(
                    f"SELECT nextval('{self._sequence}') FROM generate_series(1, ?)", count
                )
                ids = sorted(int(row[0]) for row in rows)
                self._register(txn, ids, previous)
            if previous is not None:
                await txn.queue(
                    "UPDATE stream_positions SET position = ? WHERE stream_name = ?",
                    ids[-1],
                    self.name,
                )
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

    async def _reserve(self, txn: Transaction, count: int) -> None:
        """Reserve at least `count` more positions from the sequence (PostgreSQL, one
        process). They are handed out in increasing order: the sequence only grows, and
        one reservation at a time. Unused ones are a gap (after a restart or
        `use_cluster`), which readers do not mind."""
        async with self._allocate_lock:
            if len(self._reserved) >= count:
                return  # another allocation reserved meanwhile
            want = max(count - len(self._reserved), RESERVE_BLOCK)
            rows = await txn.fetch_all(
                f"SELECT nextval('{self._sequence}') FROM generate_series(1, ?)", want
            )
            self._reserved.extend(sorted(int(row[0]) for row in rows))

    def _register(self, txn: Transaction, ids: list[int], previous: int | None = None) -> None:
        self._last = max(self._last, ids[-1])
        for i in ids:
            self._unfinished[i] = None

        def finished() -> None:
            for i in ids:
                self._unfinished.pop(i, None)

        def committed() -> None:
            finished()
            if self._publish is not None and previous is not None:
                self.advance(previous, ids[-1])
                self._publish(self.name, previous, ids[-1])

        def rolled_back() -> None:
            finished()
            if self._dialect == "sqlite" and self._last == ids[-1]:
                # No later id was handed out (one writer; a commit is pipelined, so the
                # next transaction may have allocated before this one failed to commit),
                # and the stream_positions row rolled back with it: hand them back.
                # Otherwise they stay a gap, as on PostgreSQL.
                self._last = ids[0] - 1

        txn.call_after_commit(committed)
        txn.call_on_rollback(rolled_back)
