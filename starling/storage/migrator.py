"""Forward-only schema migrations, applied at start.

Migrations are SQL files in ``starling/storage/migrations/`` named ``NNNN_name.sql``
(shared by both engines; ``{blob}``-style tokens are filled in by the dialect) or, where the
dialects differ, ``NNNN_name.sqlite.sql`` and ``NNNN_name.postgres.sql``. A dialect-specific
file wins over the shared one for its engine. Versions start at 1 and have no gaps.

The ``schema_version`` table records each version applied. Each migration runs in its own
transaction together with its ``schema_version`` row, so a failed migration leaves the
database at the previous version. On PostgreSQL an advisory lock keeps two processes
starting at once from applying the same migration twice. A database whose version is newer
than the newest file here is refused (:class:`SchemaTooNewError`): an older Starling must
not write to a schema it does not understand.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import time
from importlib import resources
from importlib.abc import Traversable

from starling.storage.database import Database, SchemaTooNewError, StorageError, Transaction
from starling.storage.dialect import DialectName, dialect_for

_FILE_NAME = re.compile(r"^(\d{4})_(\w+?)(?:\.(sqlite|postgres))?\.sql$")
# An arbitrary constant: the key of the PostgreSQL advisory lock taken while migrating.
_PG_MIGRATION_LOCK = 0x5354_4152  # "STAR"


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # ready to run on the engine it was loaded for


def _default_directory() -> Traversable:
    return resources.files("starling.storage").joinpath("migrations")


def load_migrations(dialect: DialectName, directory: Traversable | None = None) -> list[Migration]:
    """The migrations for ``dialect``, in version order."""
    if directory is None:
        directory = _default_directory()
    shared: dict[int, Traversable] = {}
    specific: dict[int, Traversable] = {}
    names: dict[int, str] = {}
    for entry in directory.iterdir():
        m = _FILE_NAME.match(entry.name)
        if m is None:
            continue
        version, name, only_for = int(m.group(1)), m.group(2), m.group(3)
        if names.setdefault(version, name) != name:
            raise StorageError(f"two migrations numbered {version}: {names[version]}, {name}")
        if only_for is None:
            shared[version] = entry
        elif only_for == dialect:
            specific[version] = entry
    migrations: list[Migration] = []
    render = dialect_for(dialect).render_migration
    for expected, version in enumerate(sorted(names), start=1):
        if version != expected:
            raise StorageError(f"migration {expected:04d} is missing")
        source = specific.get(version) or shared.get(version)
        if source is None:
            raise StorageError(f"migration {version:04d}_{names[version]} has no {dialect} file")
        sql = source.read_text(encoding="utf-8")
        migrations.append(Migration(version, names[version], render(sql)))
    return migrations


def split_sqlite_script(script: str) -> list[str]:
    """Split a script into statements (SQLite runs one per call; executescript() would
    commit our transaction). sqlite3.complete_statement knows about strings, comments and
    trigger bodies."""
    statements: list[str] = []
    start = 0
    position = script.find(";")
    while position != -1:
        candidate = script[start : position + 1]
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            start = position + 1
        position = script.find(";", position + 1)
    rest = script[start:].strip()
    if rest and not all(
        line.strip().startswith("--") for line in rest.splitlines() if line.strip()
    ):
        statements.append(rest)
    return statements


async def _run_script(txn: Transaction, script: str) -> None:
    if txn.dialect == "postgres":
        if not split_sqlite_script(script):
            return  # only comments: asyncpg returns no status for an empty script
        # Without arguments asyncpg uses the simple protocol, which runs a whole script.
        await txn.execute(script)
    else:
        for statement in split_sqlite_script(script):
            await txn.execute(statement)


async def _version_in(txn: Transaction) -> int:
    if txn.dialect == "postgres":
        await txn.execute("SELECT pg_advisory_xact_lock(?)", _PG_MIGRATION_LOCK)
    await txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    version = await txn.fetch_val("SELECT MAX(version) FROM schema_version")
    return int(version or 0)


async def schema_version(db: Database) -> int:
    """The version of the database's schema (0 for an empty database)."""
    async with db.transaction() as txn:
        return await _version_in(txn)


async def apply_migrations(db: Database, migrations: list[Migration] | None = None) -> int:
    """Apply every migration newer than the database; return the resulting version."""
    if migrations is None:
        migrations = load_migrations(db.dialect)
    latest = migrations[-1].version if migrations else 0
    current = await schema_version(db)
    if current > latest:
        raise SchemaTooNewError(
            f"the database schema is at version {current}, but this Starling knows only up to "
            f"{latest}: upgrade Starling (downgrading the database is not supported)"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        async with db.transaction(heavy=True) as txn:
            # Re-read under the lock: another process may have migrated meanwhile.
            if await _version_in(txn) >= migration.version:
                continue
            await _run_script(txn, migration.sql)
            await txn.execute(
                "INSERT INTO schema_version (version, name, applied_ts) VALUES (?, ?, ?)",
                migration.version,
                migration.name,
                int(time.time() * 1000),
            )
        current = migration.version
    return current
