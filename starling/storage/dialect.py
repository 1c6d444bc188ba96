"""The SQL differences between SQLite and PostgreSQL, in one place.

Queries are written once, for both engines, with ``?`` placeholders. What differs:

- parameter style: PostgreSQL wants ``$1..$n``; :func:`to_dollar_params` rewrites (cached);
- array parameters: ``col = ANY(?)`` with a list on PostgreSQL, ``col IN (SELECT value FROM
  json_each(?))`` with a JSON array on SQLite (one SQL string for any list length, no
  parameter-count limit) — see :meth:`Dialect.in_array` / :meth:`Dialect.array`;
- column types in migrations: ``{blob}``, ``{bigint_pk_auto}`` ... — see
  :meth:`Dialect.render_migration`;
- row locking: ``SELECT ... FOR UPDATE`` exists only on PostgreSQL (SQLite has one writer);
- full-text search: FTS5 tables on SQLite, tsvector columns/expressions with GIN indexes on
  PostgreSQL — see :meth:`Dialect.event_search_source` and friends.

What is the same and needs no helper (SQLite >= 3.35): ``INSERT ... ON CONFLICT (...) DO
UPDATE SET c = excluded.c`` / ``DO NOTHING``, ``RETURNING``, ``BOOLEAN`` columns with
``TRUE``/``FALSE`` literals (SQLite reads them back as 1/0: coerce with ``bool()``),
``BIGINT``, ``TEXT``.
"""

from __future__ import annotations

import abc
import functools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

DialectName = Literal["sqlite", "postgres"]


@functools.lru_cache(maxsize=4096)
def to_dollar_params(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$1..$n``, leaving ``?`` alone inside string
    literals, quoted identifiers and comments. Cached per SQL string.

    PostgreSQL's JSONB ``?``/``?|``/``?&`` operators cannot be written with this; use
    ``jsonb_exists()`` and friends instead.
    """
    if "?" not in sql:
        return sql
    parts = split_placeholders(sql)
    out = [parts[0]]
    for n, part in enumerate(parts[1:], 1):
        out.append(f"${n}")
        out.append(part)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def split_placeholders(sql: str) -> tuple[str, ...]:
    """The SQL around its ``?`` placeholders (one more part than placeholders), with
    ``?`` inside string literals, quoted identifiers and comments left in the parts."""
    parts: list[str] = []
    out: list[str] = []
    i = 0
    length = len(sql)
    while i < length:
        c = sql[i]
        if c == "'" or c == '"':
            # A quoted run; a doubled quote is an escaped quote and just continues it.
            end = sql.find(c, i + 1)
            while end != -1 and end + 1 < length and sql[end + 1] == c:
                end = sql.find(c, end + 2)
            end = length if end == -1 else end + 1
            out.append(sql[i:end])
            i = end
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = length if end == -1 else end
            out.append(sql[i:end])
            i = end
        elif c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = length if end == -1 else end + 2
            out.append(sql[i:end])
            i = end
        elif c == "?":
            parts.append("".join(out))
            out = []
            i += 1
        else:
            # Copy the plain run up to the next character that matters, in one slice.
            j = i + 1
            while j < length and sql[j] not in "'\"-/?":
                j += 1
            out.append(sql[i:j])
            i = j
    parts.append("".join(out))
    return tuple(parts)


_MIGRATION_TOKEN = re.compile(r"\{(\w+)\}")


class Dialect(abc.ABC):
    """SQL fragments that differ per engine. Use ``db.sql`` / ``txn.sql`` to get the
    right one; never branch on the engine in store code when a helper here can do it."""

    name: DialectName
    # Type names substituted into migrations written for both engines.
    migration_tokens: dict[str, str]
    for_update: str
    """Append to a SELECT inside a transaction to lock the rows read (PostgreSQL); empty on
    SQLite, where the single writer already serialises transactions."""

    @abc.abstractmethod
    def in_array(self, column: str) -> str:
        """A condition true when ``column`` is in the array parameter given by
        :meth:`array` (one ``?``)."""

    @abc.abstractmethod
    def array(self, values: Iterable[Any]) -> Any:
        """The parameter value for an :meth:`in_array` placeholder."""

    @abc.abstractmethod
    def text_int_pairs(
        self, alias: str, text_col: str, int_col: str, pairs: Sequence[tuple[str, int]]
    ) -> tuple[str, list[Any]]:
        """A FROM-clause table `alias(text_col, int_col)` holding `pairs`, and its
        parameters: per-row bounds for one query over many rooms."""

    # --- full-text search (migration 0010: FTS5 on SQLite, tsvector + GIN on PostgreSQL) ---

    @abc.abstractmethod
    def prefix_query(self, words: Sequence[str]) -> str:
        """The parameter for a full-text source below: every word, each as a prefix.
        `words` must be alphanumeric (no query syntax)."""

    @abc.abstractmethod
    def event_search_source(self) -> tuple[str, str]:
        """A FROM clause yielding ``event_search s`` rows matching a
        :meth:`prefix_query` (its one ``?``, the first parameter of the FROM clause),
        and the expression of their score (higher is more relevant)."""

    @abc.abstractmethod
    def user_directory_source(self, remote: bool = False) -> tuple[str, str]:
        """Like :meth:`event_search_source`, for ``profiles p`` (with `remote`, the
        ``user_directory_remote p`` of other servers' users) matched by user ID and
        display name words."""

    def render_migration(self, sql: str) -> str:
        """Replace ``{token}`` type names (e.g. ``{blob}``) in a shared migration file.
        Braces around any other word are left untouched."""

        def replace(m: re.Match[str]) -> str:
            return self.migration_tokens.get(m.group(1), m.group(0))

        return _MIGRATION_TOKEN.sub(replace, sql)


class SqliteDialect(Dialect):
    name = "sqlite"
    migration_tokens = {
        "blob": "BLOB",
        "bigint_pk_auto": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "json": "TEXT",
    }
    for_update = ""

    def in_array(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    def array(self, values: Iterable[Any]) -> Any:
        return json.dumps(list(values))

    def text_int_pairs(
        self, alias: str, text_col: str, int_col: str, pairs: Sequence[tuple[str, int]]
    ) -> tuple[str, list[Any]]:
        sql = (
            f"(SELECT json_extract(j.value, '$[0]') AS {text_col},"
            f" json_extract(j.value, '$[1]') AS {int_col} FROM json_each(?) j) {alias}"
        )
        return sql, [json.dumps([[t, n] for t, n in pairs])]

    def prefix_query(self, words: Sequence[str]) -> str:
        return " ".join(f'"{w}"*' for w in words)

    def event_search_source(self) -> tuple[str, str]:
        return (
            "(SELECT rowid AS search_id, -rank AS score FROM event_search_fts"
            " WHERE event_search_fts MATCH ?) f"
            " JOIN event_search s ON s.search_id = f.search_id",
            "f.score",
        )

    def user_directory_source(self, remote: bool = False) -> tuple[str, str]:
        fts, table = (
            ("user_directory_remote_fts", "user_directory_remote")
            if remote
            else ("user_directory_fts", "profiles")
        )
        return (
            f"(SELECT rowid AS profile_rowid, -rank AS score FROM {fts}"
            f" WHERE {fts} MATCH ?) f"
            f" JOIN {table} p ON p.rowid = f.profile_rowid",
            "f.score",
        )


class PostgresDialect(Dialect):
    name = "postgres"
    migration_tokens = {
        "blob": "BYTEA",
        "bigint_pk_auto": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "json": "JSONB",
    }
    for_update = " FOR UPDATE"

    def in_array(self, column: str) -> str:
        return f"{column} = ANY(?)"

    def array(self, values: Iterable[Any]) -> Any:
        return values if isinstance(values, Sequence) else list(values)

    def text_int_pairs(
        self, alias: str, text_col: str, int_col: str, pairs: Sequence[tuple[str, int]]
    ) -> tuple[str, list[Any]]:
        sql = f"unnest(?::text[], ?::bigint[]) AS {alias}({text_col}, {int_col})"
        return sql, [[t for t, _ in pairs], [n for _, n in pairs]]

    def prefix_query(self, words: Sequence[str]) -> str:
        return " & ".join(f"{w}:*" for w in words)

    def event_search_source(self) -> tuple[str, str]:
        return (
            "(SELECT to_tsquery('english', ?) AS q) f JOIN event_search s ON s.vector @@ f.q",
            "ts_rank_cd(s.vector, f.q)",
        )

    def user_directory_source(self, remote: bool = False) -> tuple[str, str]:
        # The same expression as the profiles_directory index of migration 0010 and
        # user_directory_remote_words of 0043.
        vector = (
            "to_tsvector('simple', regexp_replace(p.user_id || ' ' ||"
            " COALESCE(p.displayname, ''), '[[:punct:]]', ' ', 'g'))"
        )
        table = "user_directory_remote" if remote else "profiles"
        return (
            f"(SELECT to_tsquery('simple', ?) AS q) f JOIN {table} p ON {vector} @@ f.q",
            f"ts_rank_cd({vector}, f.q)",
        )


SQLITE = SqliteDialect()
POSTGRES = PostgresDialect()


def dialect_for(name: DialectName) -> Dialect:
    return SQLITE if name == "sqlite" else POSTGRES
