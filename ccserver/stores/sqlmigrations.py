"""
The SQL schema's versions: migration files in C{ccserver/stores/schema/}
(C{NNNN_name.sql}), applied in order when a store opens, each in its own
transaction with its row in C{schema_version}.  A file named for one
dialect (C{NNNN_name.postgresql.sql}) changes only that dialect's
databases; the others record its version and change nothing, so that
every database has every version.

Opening a database that is up to date takes no lock; otherwise each step
holds a lock (PostgreSQL: an advisory lock in the transaction; SQLite:
C{BEGIN IMMEDIATE}: L{Dialect.migration_lock}) and reads the version again
under it, so two processes opening at once never both apply a migration.
"""

from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from attrs import frozen

from ccserver.errors import ConfigError
from ccserver.stores.sqldialects import Dialect

#: How long one migration step may take (waiting for another process'
#: migration included): far longer than an operation, since rewriting a
#: large table is slow, but not forever.
MIGRATION_TIMEOUT = 600.0

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+(?:\.(postgresql|sqlite))?\.sql$")


@frozen
class Migration:
    """
    One schema migration file.
    """

    version: int
    name: str
    statements: tuple[str, ...]
    #: the one dialect whose databases it changes, or None for all
    dialect: str | None = None


def split_statements(script: str) -> tuple[str, ...]:
    """
    The statements of a migration file: comments dropped, split at every
    semicolon that ends a line.
    """
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return tuple(s.strip() for s in statements if s.strip())


def load_migrations(folder: Traversable | None = None) -> tuple[Migration, ...]:
    """
    The migrations in C{folder} (by default the package's C{schema/}), in
    order; their versions must run 1, 2, 3, ... without a gap.
    """
    if folder is None:
        folder = resources.files("ccserver.stores") / "schema"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(
                Migration(
                    int(match.group(1)),
                    entry.name,
                    split_statements(entry.read_text(encoding="utf-8")),
                    match.group(2),
                )
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema migrations must be numbered 1, 2, 3, ...: {versions}")
    return tuple(found)


#: The version table's statements, with C{?} placeholders.
CREATE_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
)
SCHEMA_VERSION = "SELECT MAX(version) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"


@frozen
class Schema:
    """
    The migrations of one database: the steps of bringing it up to date,
    each run in a transaction of its own (the cursor's).

    @ivar url: the database's, masked: for messages.
    @ivar timeout: the store's operations' timeout, restored after a
        migration's longer one.
    """

    dialect: Dialect
    migrations: tuple[Migration, ...]
    url: str
    timeout: float

    @property
    def latest(self) -> int:
        return self.migrations[-1].version if self.migrations else 0

    def check(self, current: int) -> None:
        """
        @raise ConfigError: the database is newer than this ccserver.
        """
        if current > self.latest:
            raise ConfigError(
                f"[store] url: the database {self.url} has schema version {current}, "
                f"newer than this ccserver knows ({self.latest}): upgrade ccserver"
            )

    def read_version(self, cursor: Any) -> int:
        """
        The version the database is at (0: none yet), without a lock.
        """
        cursor.execute(self.dialect.schema_version_exists)
        if not cursor.fetchone()[0]:
            return 0
        cursor.execute(SCHEMA_VERSION)
        return int(cursor.fetchone()[0] or 0)

    def step(self, cursor: Any) -> int | None:
        """
        Under the migration lock, apply the next migration, if any is
        missing still; return the version now applied, or None.
        """
        t = self.dialect.translate
        self.dialect.migration_lock(cursor, max(self.timeout, MIGRATION_TIMEOUT))
        try:
            cursor.execute(CREATE_SCHEMA_VERSION)
            cursor.execute(SCHEMA_VERSION)
            current = int(cursor.fetchone()[0] or 0)
            self.check(current)
            pending = [m for m in self.migrations if m.version > current]
            if not pending:
                return None
            migration = pending[0]
            if migration.dialect in (None, self.dialect.name):
                for statement in migration.statements:
                    cursor.execute(statement)
            cursor.execute(t(RECORD_VERSION), (migration.version, int(time.time())))
            return migration.version
        finally:
            if self.dialect.name == "sqlite":
                try:
                    cursor.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                except sqlite3.Error:
                    pass

    def apply_all(self, cursor: Any) -> None:
        """
        Apply every missing migration (L{step} until none is), for a
        caller without the store: the bench's own databases, the tests'.
        """
        while self.step(cursor) is not None:
            pass
