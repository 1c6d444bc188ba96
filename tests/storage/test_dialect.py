"""The engine-independent pieces: placeholder rewriting, migration rendering, script split."""

from __future__ import annotations

import pytest

from starling.storage.dialect import POSTGRES, SQLITE, to_dollar_params
from starling.storage.migrator import load_migrations, split_sqlite_script


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = $1 AND b = $2"),
        ("SELECT '?' , ?", "SELECT '?' , $1"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1"),
        ('SELECT "odd?column" FROM t WHERE x = ?', 'SELECT "odd?column" FROM t WHERE x = $1'),
        ("SELECT ? -- why?\n, ?", "SELECT $1 -- why?\n, $2"),
        ("SELECT /* ? */ ?", "SELECT /* ? */ $1"),
        ("SELECT a - ?, b / ?", "SELECT a - $1, b / $2"),
        ("INSERT INTO t VALUES (?,?,?)", "INSERT INTO t VALUES ($1,$2,$3)"),
        ("SELECT 'unterminated ?", "SELECT 'unterminated ?"),
        ("SELECT ''", "SELECT ''"),
    ],
)
def test_placeholders_are_rewritten_outside_literals(sql: str, expected: str) -> None:
    assert to_dollar_params(sql) == expected


def test_placeholder_rewriting_is_cached() -> None:
    sql = "SELECT ? FROM cached_example"
    assert to_dollar_params(sql) is to_dollar_params(sql)


def test_migration_tokens_per_dialect() -> None:
    sql = "CREATE TABLE t (k {blob} PRIMARY KEY, j TEXT DEFAULT '{}', o {other})"
    assert SQLITE.render_migration(sql) == (
        "CREATE TABLE t (k BLOB PRIMARY KEY, j TEXT DEFAULT '{}', o {other})"
    )
    assert POSTGRES.render_migration(sql) == (
        "CREATE TABLE t (k BYTEA PRIMARY KEY, j TEXT DEFAULT '{}', o {other})"
    )


def test_array_parameters() -> None:
    assert SQLITE.in_array("d") == "d IN (SELECT value FROM json_each(?))"
    assert SQLITE.array(["a", "b"]) == '["a", "b"]'
    assert POSTGRES.in_array("d") == "d = ANY(?)"
    assert POSTGRES.array(iter(["a"])) == ["a"]


def test_split_sqlite_script() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
    CREATE TRIGGER tr AFTER INSERT ON a BEGIN
        UPDATE a SET x = 'y'; DELETE FROM a WHERE 0;
    END; CREATE INDEX i ON a (x);
    -- trailing comment
    """
    statements = split_sqlite_script(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'semi;colon');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2] == "CREATE INDEX i ON a (x);"


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_shipped_migrations_load(dialect: str) -> None:
    migrations = load_migrations(dialect)  # type: ignore[arg-type]
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert "{blob}" not in migrations[0].sql
