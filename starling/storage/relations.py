"""Relations between events and the threads they form (spec: "Forming relationships
between events", "Threading").

`record` stores the relation of a new event in the transaction that persists it;
`on_redacted` removes it again (a redaction strips m.relates_to, which breaks the
relationship). The reads serve /relations pages, /threads pages and the bundled
aggregations, each taking a batch of parents and costing one query. Every read joins
the parent in `events` on the child's room: a relation to an event of another room (or
to an event we do not have) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starling.protocol.event import Event
from starling.storage.database import Database, Transaction
from starling.storage.events import LruCache

THREAD = "m.thread"
REPLACE = "m.replace"
ANNOTATION = "m.annotation"
REFERENCE = "m.reference"
MAX_ID_LENGTH = 255
# New local events remembered as having no children (the newest, the ones /sync carries).
MAX_REMEMBERED_CHILDLESS = 2048


@dataclass(frozen=True, slots=True)
class Relation:
    rel_type: str
    parent_id: str
    key: str | None = None  # the annotation key


def relation_of(content: Mapping[str, Any]) -> Relation | None:
    """The well-formed m.relates_to of an event's content, or None.

    A relation needs a string rel_type and a string event_id that looks like an event
    ID; an annotation needs a string key. None of them may hold NUL (no text column can
    store it). Anything else is not a relation (replies, which carry only m.in_reply_to,
    included).
    """
    relates_to = content.get("m.relates_to")
    if not isinstance(relates_to, dict):
        return None
    rel_type = relates_to.get("rel_type")
    parent_id = relates_to.get("event_id")
    if (
        not isinstance(rel_type, str)
        or not rel_type
        or len(rel_type) > MAX_ID_LENGTH
        or "\x00" in rel_type
    ):
        return None
    if (
        not isinstance(parent_id, str)
        or not parent_id.startswith("$")
        or len(parent_id) > MAX_ID_LENGTH
        or "\x00" in parent_id
    ):
        return None
    key = None
    if rel_type == ANNOTATION:
        key = relates_to.get("key")
        if not isinstance(key, str) or "\x00" in key:
            return None
    return Relation(rel_type, parent_id, key)


def is_valid_edit(event: Event) -> bool:
    """Whether the event, as a child, can be a replacement: not a state event, and with
    m.new_content (which an encrypted edit carries inside its ciphertext)."""
    if event.state_key is not None:
        return False
    return event.type == "m.room.encrypted" or isinstance(event.content.get("m.new_content"), dict)


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    latest_event_id: str
    count: int
    user_participated: bool  # the asking user sent a reply


@dataclass(frozen=True, slots=True)
class Aggregations:
    threads: dict[str, ThreadSummary]  # thread root -> summary
    edits: dict[str, str]  # original -> its latest valid edit
    references: dict[str, list[str]]  # parent -> referencing events, oldest first


class RelationStore:
    """Remembers which new local events have no children yet, so that the bundled
    aggregations of the events an incremental /sync carries (usually just sent, nothing
    relates to them yet) need no query: an event this server has just built has an
    event ID nobody could name before (a hash of its content, timestamp and prev
    events; a random one in the oldest room versions), and every relation recorded since
    goes through `record`, which forgets its parent. That holds while this process is
    the only writer: with workers `remember_childless` is turned off."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.remember_childless = True
        self._childless: LruCache[str, bool] = LruCache(MAX_REMEMBERED_CHILDLESS)

    def note_new_parent(self, txn: Transaction, event_id: str) -> None:
        """`event_id` was built here just now: once `txn` commits, it has no children."""
        if not self.remember_childless:
            return

        txn.call_after_commit(lambda: self._childless.put(event_id, True))

    # --- writing -------------------------------------------------------------------------

    async def record(self, txn: Transaction, event: Event, stream_ordering: int) -> None:
        """Store the relation of a newly persisted event, if it has one."""
        relation = relation_of(event.content)
        if relation is None or relation.parent_id == event.event_id:
            return
        self._childless.pop(relation.parent_id)
        thread_id = relation.parent_id if relation.rel_type == THREAD else None
        await txn.queue(
            "INSERT INTO event_relations (event_id, relates_to_id, rel_type, room_id, type,"
            " sender, stream_ordering, origin_server_ts, thread_id, aggregation_key,"
            " is_valid_edit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event.event_id,
            relation.parent_id,
            relation.rel_type,
            event.room_id,
            event.type,
            event.sender,
            stream_ordering,
            event.origin_server_ts,
            thread_id,
            relation.key,
            relation.rel_type == REPLACE and is_valid_edit(event),
        )
        if thread_id is not None:
            await txn.execute(
                "INSERT INTO threads (room_id, thread_id, latest_event_id, latest_stream_ordering)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (room_id, thread_id) DO UPDATE SET"
                " latest_event_id = excluded.latest_event_id,"
                " latest_stream_ordering = excluded.latest_stream_ordering"
                " WHERE threads.latest_stream_ordering < excluded.latest_stream_ordering",
                event.room_id,
                thread_id,
                event.event_id,
                stream_ordering,
            )

    async def on_redacted(self, txn: Transaction, event_id: str, room_id: str) -> None:
        """The event (of that room) was redacted: it no longer relates to anything."""
        row = await txn.fetch_one(
            "SELECT relates_to_id, rel_type FROM event_relations"
            " WHERE event_id = ? AND room_id = ?",
            event_id,
            room_id,
        )
        if row is None:
            return
        parent_id, rel_type = row[0], row[1]
        await txn.execute("DELETE FROM event_relations WHERE event_id = ?", event_id)
        if rel_type != THREAD:
            return
        latest = await txn.fetch_one(
            "SELECT event_id, stream_ordering FROM event_relations"
            " WHERE relates_to_id = ? AND rel_type = ? AND room_id = ?"
            " ORDER BY stream_ordering DESC LIMIT 1",
            parent_id,
            THREAD,
            room_id,
        )
        if latest is None:
            await txn.execute(
                "DELETE FROM threads WHERE room_id = ? AND thread_id = ?", room_id, parent_id
            )
        else:
            await txn.execute(
                "UPDATE threads SET latest_event_id = ?, latest_stream_ordering = ?"
                " WHERE room_id = ? AND thread_id = ?",
                latest[0],
                int(latest[1]),
                room_id,
                parent_id,
            )

    # --- /relations ----------------------------------------------------------------------

    async def get_children(
        self,
        room_id: str,
        parent_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        lower_exclusive: int | None,
        upper_inclusive: int | None,
        backwards: bool,
        limit: int,
        recurse_depth: int = 1,
    ) -> list[tuple[str, int]]:
        """(event ID, stream position) of the children of a parent in (lower, upper],
        newest first when `backwards`. With `recurse_depth` > 1 the children of children
        are included, down to that depth; the filters apply at every level, so a child
        reached only through a non-matching event is left out."""
        filters = ""
        filter_args: list[Any] = []
        if rel_type is not None:
            filters += " AND r.rel_type = ?"
            filter_args.append(rel_type)
        if event_type is not None:
            filters += " AND r.type = ?"
            filter_args.append(event_type)
        lower = lower_exclusive if lower_exclusive is not None else -(2**62)
        upper = upper_inclusive if upper_inclusive is not None else 2**62
        order = "DESC" if backwards else "ASC"
        if recurse_depth <= 1:
            return [
                (r[0], int(r[1]))
                for r in await self._db.fetch_all(
                    "SELECT r.event_id, r.stream_ordering FROM event_relations r"
                    f" WHERE r.relates_to_id = ? AND r.room_id = ?{filters}"
                    " AND r.stream_ordering > ? AND r.stream_ordering <= ?"
                    f" ORDER BY r.stream_ordering {order} LIMIT ?",
                    parent_id,
                    room_id,
                    *filter_args,
                    lower,
                    upper,
                    limit,
                )
            ]
        rows = await self._db.fetch_all(
            "WITH RECURSIVE related (event_id, depth) AS ("
            "  SELECT r.event_id, 1 FROM event_relations r"
            f"  WHERE r.relates_to_id = ? AND r.room_id = ?{filters}"
            "  UNION"
            "  SELECT r.event_id, related.depth + 1 FROM event_relations r"
            "  JOIN related ON r.relates_to_id = related.event_id"
            f"  WHERE related.depth < ? AND r.room_id = ?{filters}"
            ")"
            " SELECT r.event_id, r.stream_ordering FROM event_relations r"
            " WHERE r.event_id IN (SELECT event_id FROM related)"
            " AND r.stream_ordering > ? AND r.stream_ordering <= ?"
            f" ORDER BY r.stream_ordering {order} LIMIT ?",
            parent_id,
            room_id,
            *filter_args,
            recurse_depth,
            room_id,
            *filter_args,
            lower,
            upper,
            limit,
        )
        return [(r[0], int(r[1])) for r in rows]

    # --- /threads ------------------------------------------------------------------------

    async def get_threads(
        self,
        room_id: str,
        upper_inclusive: int | None,
        limit: int,
        participant: str | None = None,
    ) -> list[tuple[str, int]]:
        """(thread root ID, position of its latest reply), latest first, for threads whose
        latest reply is at or before `upper_inclusive`. With `participant`, only threads
        that user started or replied to."""
        upper = upper_inclusive if upper_inclusive is not None else 2**62
        sql = (
            "SELECT t.thread_id, t.latest_stream_ordering FROM threads t"
            " WHERE t.room_id = ? AND t.latest_stream_ordering <= ?"
        )
        args: list[Any] = [room_id, upper]
        if participant is not None:
            sql += (
                " AND (EXISTS (SELECT 1 FROM events e WHERE e.event_id = t.thread_id"
                " AND e.sender = ?) OR EXISTS (SELECT 1 FROM event_relations r"
                " WHERE r.relates_to_id = t.thread_id AND r.rel_type = ? AND r.room_id = ?"
                " AND r.sender = ?))"
            )
            args += [participant, THREAD, room_id, participant]
        sql += " ORDER BY t.latest_stream_ordering DESC LIMIT ?"
        rows = await self._db.fetch_all(sql, *args, limit)
        return [(r[0], int(r[1])) for r in rows]

    # --- aggregations --------------------------------------------------------------------

    async def aggregations(
        self,
        *,
        thread_roots: Sequence[str],
        edit_targets: Sequence[str],
        reference_targets: Sequence[str],
        user_id: str | None,
        ignored: frozenset[str],
    ) -> Aggregations:
        """The raw material of bundled aggregations, in one statement:

        - for each of `thread_roots` that has replies: the latest reply, the number of
          replies and whether `user_id` sent one;
        - for each of `edit_targets`: its most recent valid replacement (same room, same
          sender, same type, the original not a state event; spec: "Validity of
          replacement events"), by origin_server_ts, then the largest event ID;
        - for each of `reference_targets`: the events that m.reference it, oldest first.

        Children sent by `ignored` users are left out of threads and references.
        Parents known to have no children are not asked about.
        """
        if self._childless:
            childless = self._childless.get
            thread_roots = [e for e in thread_roots if not childless(e)]
            edit_targets = [e for e in edit_targets if not childless(e)]
            reference_targets = [e for e in reference_targets if not childless(e)]
        parts: list[str] = []
        args: list[Any] = []
        array = self._db.sql.array
        join_parent = "JOIN events p ON p.event_id = r.relates_to_id AND p.room_id = r.room_id"
        if thread_roots:
            args += [user_id or "", array(thread_roots), THREAD]
            not_ignored = self._not_ignored(ignored, args)
            parts.append(
                "SELECT 't', q.relates_to_id, q.event_id, q.cnt, q.mine, q.so FROM ("
                "  SELECT r.relates_to_id, r.event_id, r.stream_ordering AS so,"
                "    COUNT(*) OVER (PARTITION BY r.relates_to_id) AS cnt,"
                "    MAX(CASE WHEN r.sender = ? THEN 1 ELSE 0 END)"
                "      OVER (PARTITION BY r.relates_to_id) AS mine,"
                "    ROW_NUMBER() OVER ("
                "      PARTITION BY r.relates_to_id ORDER BY r.stream_ordering DESC) AS rn"
                f"  FROM event_relations r {join_parent}"
                f"  WHERE {self._db.sql.in_array('r.relates_to_id')} AND r.rel_type = ?"
                f"{not_ignored}"
                ") q WHERE q.rn = 1"
            )
        if edit_targets:
            args += [array(edit_targets), REPLACE]
            parts.append(
                "SELECT 'e', q.relates_to_id, q.event_id, 0, 0, q.so FROM ("
                "  SELECT r.relates_to_id, r.event_id, r.stream_ordering AS so, RANK() OVER ("
                "    PARTITION BY r.relates_to_id ORDER BY r.origin_server_ts DESC) AS rk"
                f"  FROM event_relations r {join_parent}"
                f"  WHERE {self._db.sql.in_array('r.relates_to_id')} AND r.rel_type = ?"
                "    AND r.is_valid_edit AND p.sender = r.sender AND p.type = r.type"
                "    AND p.state_key IS NULL"
                ") q WHERE q.rk = 1"
            )
        if reference_targets:
            args += [array(reference_targets), REFERENCE]
            not_ignored = self._not_ignored(ignored, args)
            parts.append(
                "SELECT 'r', r.relates_to_id, r.event_id, 0, 0, r.stream_ordering"
                f" FROM event_relations r {join_parent}"
                f" WHERE {self._db.sql.in_array('r.relates_to_id')} AND r.rel_type = ?"
                f"{not_ignored}"
            )
        out = Aggregations({}, {}, {})
        if not parts:
            return out
        rows = await self._db.fetch_all(" UNION ALL ".join(parts), *args)
        for kind, parent, child, count, mine, _ in sorted(rows, key=lambda r: int(r[5])):
            if kind == "t":
                out.threads[parent] = ThreadSummary(child, int(count), bool(mine))
            elif kind == "e":
                # Ties on the timestamp go to the largest event ID, compared by code
                # point here (the database's collation may not be).
                if parent not in out.edits or child > out.edits[parent]:
                    out.edits[parent] = child
            else:
                out.references.setdefault(parent, []).append(child)
        return out

    def _not_ignored(self, ignored: frozenset[str], args: list[Any]) -> str:
        if not ignored:
            return ""
        args.append(self._db.sql.array(sorted(ignored)))
        return f" AND NOT ({self._db.sql.in_array('r.sender')})"
