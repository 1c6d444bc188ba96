"""Persistence: one async API over two engines (SQLite, PostgreSQL), migrations, streams.

Start with :func:`open_database`; stores such as :class:`~starling.storage.accounts.AccountStore`
take the :class:`Database` it returns. See ``database.py`` for the shared semantics and
``dialect.py`` for the SQL that differs between engines.
"""

from starling.storage.database import (
    Database,
    DatabaseConfig,
    IntegrityError,
    Row,
    SchemaTooNewError,
    StorageError,
    Transaction,
    UniqueViolation,
    open_database,
)
from starling.storage.streams import StreamIdGenerator

__all__ = [
    "Database",
    "DatabaseConfig",
    "IntegrityError",
    "Row",
    "SchemaTooNewError",
    "StorageError",
    "StreamIdGenerator",
    "Transaction",
    "UniqueViolation",
    "open_database",
]
