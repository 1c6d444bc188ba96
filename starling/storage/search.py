"""The full-text index of room events searched by /search (migration 0010).

Which text is indexed (spec: modules "Server Side Search", room_events): ``content.body``
of m.room.message, ``content.name`` of m.room.name, ``content.topic`` of m.room.topic
(with the text/plain body of its ``m.topic``). Encrypted events carry none of these, so
they are never indexed. Rows are written inside the transaction that persists the event
(`record`) and deleted when the event is redacted (`on_redacted`).

Matching is word-prefix and stemmed: SQLite uses an FTS5 table with the porter
tokenizer, PostgreSQL a generated ``to_tsvector('english', value)`` column with a GIN
index (see the dialect's `event_search_source`). Scores are bm25 (SQLite) or ts_rank_cd
(PostgreSQL): comparable within one engine only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starling.protocol.event import Event
from starling.storage.database import Database, Transaction

KEY_BODY = "content.body"
KEY_NAME = "content.name"
KEY_TOPIC = "content.topic"
ALL_KEYS = (KEY_BODY, KEY_NAME, KEY_TOPIC)
_WORD = re.compile(r"[^\W_]+")
# Longest text indexed per event: a 64 KiB body is already beyond what any client sends.
MAX_VALUE_LENGTH = 65_536


def search_words(term: str) -> list[str]:
    """The words of a search term, lower-cased, in order, without duplicates."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(term.casefold()):
        seen.setdefault(word, None)
    return list(seen)


def searchable_text(event: Event) -> tuple[str, str] | None:
    """(key, text) for an event the index covers, else None."""
    content = event.content
    value: Any = None
    if event.type == "m.room.message":
        key, value = KEY_BODY, content.get("body")
    elif event.type == "m.room.name" and event.state_key == "":
        key, value = KEY_NAME, content.get("name")
    elif event.type == "m.room.topic" and event.state_key == "":
        key, value = KEY_TOPIC, content.get("topic")
        parts = [value] if isinstance(value, str) else []
        rich = content.get("m.topic")
        representations = rich.get("m.text") if isinstance(rich, dict) else None
        if isinstance(representations, list):
            for rep in representations:
                if (
                    isinstance(rep, dict)
                    and rep.get("mimetype", "text/plain") == "text/plain"
                    and isinstance(rep.get("body"), str)
                    and rep["body"] not in parts
                ):
                    parts.append(rep["body"])
                    break
        value = "\n".join(parts) if parts else None
    else:
        return None
    if not isinstance(value, str) or not value.strip():
        return None
    # PostgreSQL text cannot hold NUL.
    return key, value[:MAX_VALUE_LENGTH].replace("\x00", "")


@dataclass(frozen=True, slots=True)
class SearchHit:
    event_id: str
    room_id: str
    sender: str
    stream_ordering: int
    score: float


class SearchStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, txn: Transaction, event: Event, position: int) -> None:
        """Index a newly persisted timeline event, if it has searchable text."""
        found = searchable_text(event)
        if found is None:
            return
        key, value = found
        await txn.queue(
            "INSERT INTO event_search (event_id, room_id, sender, type, key, stream_ordering,"
            " origin_server_ts, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            event.event_id,
            event.room_id,
            event.sender,
            event.type,
            key,
            position,
            event.origin_server_ts,
            value,
        )

    async def on_redacted(self, txn: Transaction, event_id: str) -> None:
        await txn.execute("DELETE FROM event_search WHERE event_id = ?", event_id)

    def _conditions(
        self, rooms: Sequence[tuple[str, int]], keys: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """The per-room bounds join and the WHERE clause shared by search and count."""
        sql = self._db.sql
        bounds, bound_args = sql.text_int_pairs("b", "room_id", "upper", rooms)
        where = (
            " JOIN "
            + bounds
            + " ON b.room_id = s.room_id AND s.stream_ordering <= b.upper"
            + f" WHERE {sql.in_array('s.key')}"
        )
        return where, [*bound_args, sql.array(list(keys))]

    async def search(
        self,
        words: Sequence[str],
        rooms: Sequence[tuple[str, int]],
        keys: Sequence[str],
        *,
        by_rank: bool,
        before: int | None,
        offset: int,
        limit: int,
    ) -> list[SearchHit]:
        """Matches of all `words` (as prefixes) in the given rooms, each room up to its
        stream position bound. By rank (best first, then newest), skipping `offset`
        rows; or newest first, below stream position `before`."""
        if not words or not rooms or not keys:
            return []
        sql = self._db.sql
        source, score = sql.event_search_source()
        where, args = self._conditions(rooms, keys)
        if not by_rank and before is not None:
            where += " AND s.stream_ordering < ?"
            args.append(before)
        order = f"{score} DESC, s.stream_ordering DESC" if by_rank else "s.stream_ordering DESC"
        rows = await self._db.fetch_all(
            f"SELECT s.event_id, s.room_id, s.sender, s.stream_ordering, {score}"
            f" FROM {source}{where} ORDER BY {order} LIMIT ? OFFSET ?",
            sql.prefix_query(words),
            *args,
            limit,
            offset if by_rank else 0,
        )
        return [SearchHit(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]

    async def count(
        self, words: Sequence[str], rooms: Sequence[tuple[str, int]], keys: Sequence[str]
    ) -> int:
        """How many events match (before history visibility is applied)."""
        if not words or not rooms or not keys:
            return 0
        source, _ = self._db.sql.event_search_source()
        where, args = self._conditions(rooms, keys)
        value = await self._db.fetch_val(
            f"SELECT COUNT(*) FROM {source}{where}", self._db.sql.prefix_query(words), *args
        )
        return int(value or 0)
