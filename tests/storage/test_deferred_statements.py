"""Statements nobody awaits (`Transaction.queue`, `executemany`) may be deferred and sent
together (SQLite: one trip to the writer thread; PostgreSQL: one message with the values
written as literals, postgres.py). Either way they must behave as if run one by one, on
both engines."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from starling.storage import Database, UniqueViolation
from starling.storage.postgres import _inline, _literal

NASTY = [
    "",
    "plain",
    "it's",
    "''",
    "back\\slash",
    "\\'; DROP TABLE kv; --",
    "E'\\x41'",
    "$1 ? $$ ?",
    "line\nbreak\ttab\r",
    "ünïcødé ☃ 🐦",
    "-- not a comment",
    "/* nor this */",
    "\\",
    "'",
]


async def _make_table(db: Database) -> None:
    await db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT, s TEXT, b BOOLEAN)")


async def test_values_survive_exactly(database: Database) -> None:
    await _make_table(database)
    ints = [0, 1, -1, 2**62, -(2**62), 10]
    async with database.transaction() as txn:
        for i, text in enumerate(NASTY):
            await txn.queue(
                "INSERT INTO kv (k, v, s, b) VALUES (?, ?, ?, ?)",
                f"k{i}",
                ints[i % len(ints)],
                text,
                i % 2 == 0,
            )
        await txn.executemany(
            "INSERT INTO kv (k, v, s, b) VALUES (?, ?, ?, ?)",
            [(f"m{i}" + text, None, text, None) for i, text in enumerate(NASTY)],
        )
    rows = await database.fetch_all("SELECT k, v, s, b FROM kv")
    got = {r["k"]: (r["v"], r["s"], None if r["b"] is None else bool(r["b"])) for r in rows}
    for i, text in enumerate(NASTY):
        assert got[f"k{i}"] == (ints[i % len(ints)], text, i % 2 == 0)
        assert got[f"m{i}" + text] == (None, text, None)
    assert len(got) == 2 * len(NASTY)


async def test_negative_number_after_minus_is_not_a_comment(database: Database) -> None:
    await _make_table(database)
    async with database.transaction() as txn:
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, 10 - ?)", "a", -5)
        await txn.queue("UPDATE kv SET v = v -? WHERE k = ?", -1, "a")
    assert await database.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 16


async def test_deferred_statements_run_in_order_and_see_each_other(database: Database) -> None:
    await _make_table(database)
    async with database.transaction() as txn:
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
        await txn.queue("UPDATE kv SET v = v * 10 WHERE k = ?", "a")
        await txn.executemany("UPDATE kv SET v = v + ? WHERE k = ?", [(1, "a"), (2, "a")])
        # An awaited statement sees every deferred one before it.
        assert await txn.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 13
        await txn.queue("DELETE FROM kv WHERE k = ?", "a")
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 7)
    assert await database.fetch_val("SELECT v FROM kv WHERE k = ?", "a") == 7


async def test_a_failing_deferred_statement_rolls_back_the_whole_transaction(
    database: Database,
) -> None:
    await _make_table(database)
    await database.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "taken", 1)
    outcome: list[str] = []
    with pytest.raises(UniqueViolation):
        async with database.transaction() as txn:
            await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "new", 1)
            await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "taken", 2)
            await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "after", 3)
            txn.call_after_commit(lambda: outcome.append("committed"))
            txn.call_on_rollback(lambda: outcome.append("rolled back"))
    assert outcome == ["rolled back"]
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 1
    # The connection is clean for the next transaction.
    async with database.transaction() as txn:
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "next", 4)
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 2


async def test_array_parameters(database: Database) -> None:
    await _make_table(database)
    async with database.transaction() as txn:
        await txn.executemany(
            "INSERT INTO kv (k, v) VALUES (?, ?)", [(text, i) for i, text in enumerate(NASTY)]
        )
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", 'quo"te', 100)
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "{a,b}", 101)
        doomed = [*NASTY[1::2], 'quo"te', "{a,b}", "not there"]
        await txn.queue(f"DELETE FROM kv WHERE {txn.sql.in_array('k')}", txn.sql.array(doomed))
        await txn.queue(
            f"UPDATE kv SET v = -v WHERE {txn.sql.in_array('v')}", txn.sql.array([0, 2])
        )
        await txn.queue(f"DELETE FROM kv WHERE {txn.sql.in_array('k')}", txn.sql.array([]))
    rows = await database.fetch_all("SELECT k, v FROM kv")
    kept = {i: text for i, text in enumerate(NASTY) if i % 2 == 0}
    expected = {text: (-i if i in (0, 2) else i) for i, text in kept.items()}
    assert {r[0]: r[1] for r in rows} == expected


async def test_values_without_a_literal_form_still_work(database: Database) -> None:
    """Floats and NUL characters are sent as parameters (after what waits)."""
    await _make_table(database)
    async with database.transaction() as txn:
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "b", 2)
        await txn.queue("UPDATE kv SET v = v * ? WHERE k = ?", 3.0, "b")
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "c", 3)
    rows = await database.fetch_all("SELECT k, v FROM kv ORDER BY k")
    assert [tuple(r) for r in rows] == [("a", 1), ("b", 6), ("c", 3)]
    if database.dialect == "postgres":
        with pytest.raises(asyncpg.PostgresError):
            async with database.transaction() as txn:
                await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "nul\x00", 1)
        assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 3


# Round trips to a PostgreSQL server: SQLite has no server to count them on.
@pytest.mark.parametrize("engine", ["postgres"])
async def test_postgres_sends_a_deferred_transaction_in_one_message(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _make_table(database)
    sent: list[str] = []
    original = asyncpg.connection.Connection.execute

    async def execute(conn: Any, query: str, *args: Any) -> Any:
        sent.append(query)
        return await original(conn, query, *args)

    monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute)
    async with database.transaction() as txn:
        await txn.queue("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
        await txn.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", [("b", 2), ("c", 3)])
    assert len(sent) == 1 and sent[0].startswith("BEGIN;") and sent[0].endswith("COMMIT")
    sent.clear()
    async with database.transaction():
        pass
    assert sent == []  # nothing ran: nothing sent
    await database.fetch_val("SELECT COUNT(*) FROM kv")
    assert sent == []  # a pooled read is one round trip: no reset query on release
    assert await database.fetch_val("SELECT COUNT(*) FROM kv") == 3


def test_literals() -> None:
    assert _literal(None) == "NULL"
    assert _literal(True) == "TRUE" and _literal(False) == "FALSE"
    assert _literal(-3) == "(-3)" and _literal(12) == "12"
    assert _literal("a'b\\c") == "E'a''b\\\\c'"
    assert _literal(["a", 'b"\\', -1]) == r"""E'{"a","b\\"\\\\",-1}'"""
    assert _literal(()) == "E'{}'"
    for no_literal in ("a\x00b", 1.5, b"x", ["a\x00"], [1.5], [None], [True], {"a": 1}):
        assert _literal(no_literal) is None
    assert _inline("SELECT ?, '?', ? -- ?", (1, "x")) == "SELECT 1, '?', E'x' -- ?"
    assert _inline("SELECT ?", ()) is None  # wrong count: sent as is, the server says why
