"""
What the SQL stores do beyond the contract (L{tests.test_store_contract}):
URLs, schema migrations, SQLite's durability and locking, PostgreSQL's
reconnection.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import psycopg
import pytest
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ccserver.errors import ConfigError, StoreUnavailable
from ccserver.model import AttemptKeys
from ccserver.stores import sql, sqldialects, sqlstatements
from ccserver.stores.codec import TOKENS
from ccserver.stores.guard import mask_password, url_secrets
from ccserver.stores.sql import SQLStore
from ccserver.stores.sqlmigrations import Migration, Schema, load_migrations, split_statements
from ccserver.stores.sqlpool import ConnectionPool, PooledConnection, held_connection
from ccserver.stores.urls import sqlite_path
from ccserver.testing.servers import clean_store_url, postgres_server
from tests.process import REPO, run_python
from tests.test_codec import (
    LEGACY_CLIENT,
    LEGACY_CLIENT_ROW,
    LEGACY_KEY,
    LEGACY_KEY_ROW,
    LEGACY_TOKEN,
    LEGACY_TOKEN_ROW,
    RETIRED_KEY,
    RETIRED_KEY_ROW,
)
from tests.test_store_contract import TIMEOUT, make_client, make_key, make_token

if TYPE_CHECKING:
    _TestCase = TestCase
else:
    _TestCase = object

#: The schema version of this ccserver, and the one of the test migration
#: that goes beyond it.
LATEST = load_migrations()[-1].version
TEST_VERSION = LATEST + 1
TEST_MIGRATION = f"{TEST_VERSION:04d}_test_note.sql"

#: The schema as ccserver 0.1 made it: what a database of version 1 holds.
#: Written out here, not read from 0001_initial.sql, because that is what an
#: old database is, whatever the file says today.
VERSION_1 = [
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
    """CREATE TABLE clients (
        client_id TEXT PRIMARY KEY,
        client_id_issued_at BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        client_secret_digest TEXT NOT NULL,
        registration_access_token_digest TEXT NOT NULL
    )""",
    """CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        encrypted_private_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        active_from BIGINT NOT NULL,
        retired_at BIGINT
    )""",
    "INSERT INTO schema_version (version, applied_at) VALUES (1, 1700000000)",
    """INSERT INTO clients VALUES ('client-1', 1700000000,
        '{"client_name":"Test client","grant_types":["client_credentials"],'
        || '"token_endpoint_auth_method":"client_secret_basic","scope":"read write"}',
        'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
        'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')""",
    """INSERT INTO signing_keys VALUES ('key-1', 'ES256', 'gAAAAAB-encrypted-key-1',
        1700000000, 1700000060, NULL)""",
]

#: One more migration, for these tests only: it changes the schema and the
#: data, in the SQL both databases accept.
MIGRATION_2 = """
-- for the tests: a column, an index, and data
ALTER TABLE clients ADD COLUMN note TEXT;
CREATE INDEX clients_by_issue ON clients (client_id_issued_at);
UPDATE clients SET note = 'upgraded';
"""


class URLTests(SynchronousTestCase):
    def test_mask_password(self) -> None:
        cases = {
            "postgresql://user:secret@db.example:5432/ccserver": (
                "postgresql://user:***@db.example:5432/ccserver"
            ),
            "postgresql://user@db.example/ccserver": "postgresql://user@db.example/ccserver",
            "redis://:secret@127.0.0.1:6379/2": "redis://:***@127.0.0.1:6379/2",
            "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
            "postgresql://user:p%40ss%3Aword@h/db": "postgresql://user:***@h/db",
            "postgresql://u@h/db?password=secret&sslmode=require": (
                "postgresql://u@h/db?password=***&sslmode=require"
            ),
            "sqlite:////var/lib/ccserver/ccserver.db": "sqlite:////var/lib/ccserver/ccserver.db",
            "sqlite:///ccserver.db": "sqlite:///ccserver.db",
            "memory://": "memory://",
        }
        for url, masked in cases.items():
            self.assertEqual(mask_password(url), masked, url)

    def test_url_secrets(self) -> None:
        self.assertEqual(
            set(url_secrets("postgresql://user:p%40ss@h/db?password=other")),
            {"p%40ss", "p@ss", "other"},
        )
        self.assertEqual(url_secrets("sqlite:///x.db"), ())

    def test_postgresql_url_masked(self) -> None:
        store = SQLStore.from_url("postgresql://ccserver:hunter2@db:5432/cc", reactor, timeout=1)
        self.assertEqual(store.url, "postgresql://ccserver:***@db:5432/cc")
        self.assertNotIn("hunter2", repr(store))

    def test_sqlite_urls(self) -> None:
        relative = SQLStore.from_url("sqlite:///data/ccserver.db", reactor, timeout=1)
        self.assertEqual(relative.url, "sqlite:///data/ccserver.db")
        self.assertEqual(sqlite_path(relative.url), Path("data/ccserver.db"))
        absolute = SQLStore.from_url("sqlite:////var/lib/cc.db", reactor, timeout=1)
        self.assertEqual(sqlite_path(absolute.url), Path("/var/lib/cc.db"))

    def test_other_scheme(self) -> None:
        with self.assertRaises(ConfigError):
            SQLStore.from_url("mysql://user:pw@h/db", reactor, timeout=1)


class MigrationFileTests(SynchronousTestCase):
    def test_shipped_migrations(self) -> None:
        migrations = load_migrations()
        self.assertEqual(migrations[0].version, 1)
        self.assertEqual(migrations[0].name, "0001_initial.sql")
        self.assertEqual([m.version for m in migrations], list(range(1, len(migrations) + 1)))
        for migration in migrations:
            for statement in migration.statements:
                self.assertNotIn(";", statement)
                self.assertNotIn("--", statement)

    def test_split_statements(self) -> None:
        self.assertEqual(
            split_statements(MIGRATION_2),
            (
                "ALTER TABLE clients ADD COLUMN note TEXT",
                "CREATE INDEX clients_by_issue ON clients (client_id_issued_at)",
                "UPDATE clients SET note = 'upgraded'",
            ),
        )

    def test_dialect_of_file(self) -> None:
        """
        A migration named for one dialect (C{NNNN_name.postgresql.sql})
        says so; one named for an unknown dialect is not a migration.
        """
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "0001_a.sql").write_text("CREATE TABLE a (x INTEGER);\n")
        (folder / "0002_b.postgresql.sql").write_text("ALTER TABLE a SET (fillfactor = 90);\n")
        (folder / "0003_c.sqlite.sql").write_text("CREATE TABLE c (x INTEGER);\n")
        self.assertEqual(
            [(m.name, m.dialect) for m in load_migrations(folder)],
            [("0001_a.sql", None), ("0002_b.postgresql.sql", "postgresql"),
             ("0003_c.sqlite.sql", "sqlite")],
        )
        (folder / "0004_d.mysql.sql").write_text("CREATE TABLE d (x INTEGER);\n")
        self.assertEqual(len(load_migrations(folder)), 3)

    def test_gap_in_numbers(self) -> None:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "0001_a.sql").write_text("CREATE TABLE a (x INTEGER);\n")
        (folder / "0003_c.sql").write_text("CREATE TABLE c (x INTEGER);\n")
        (folder / "notes.txt").write_text("ignored")
        with self.assertRaises(RuntimeError):
            load_migrations(folder)


def _insert(table: str, row: tuple[Any, ...]) -> str:
    """
    An INSERT of C{row} as literal SQL, for L{MigrationTestsMixin.by_hand}.
    """

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    return f"INSERT INTO {table} VALUES ({', '.join(literal(v) for v in row)})"


class MigrationTestsMixin(_TestCase):
    """
    Migrations on a real database: an old database is upgraded in place,
    keeping its data; a failed migration leaves the database as it was;
    two stores opening one database at once apply each migration once.
    """

    url: str

    def by_hand(self, statements: list[str]) -> None:
        """
        Run statements in one transaction, without ccserver.
        """
        raise NotImplementedError()

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError()

    def migrations_with(self, name: str, text: str) -> tuple[Migration, ...]:
        """
        The shipped migrations and one more, from a copy of the schema folder.
        """
        folder = Path(tempfile.mkdtemp(prefix="ccserver-schema-"))
        self.addCleanup(shutil.rmtree, folder)
        for migration in (REPO / "ccserver" / "stores" / "schema").glob("*.sql"):
            shutil.copy(migration, folder)
        (folder / name).write_text(text)
        return load_migrations(folder)

    async def open(self, migrations: tuple[Migration, ...] | None = None) -> SQLStore:
        store = SQLStore.from_url(self.url, reactor, timeout=TIMEOUT, migrations=migrations)
        self.addCleanup(store.close)
        await store.open()
        return store

    def versions(self) -> list[int]:
        return [row[0] for row in self.query("SELECT version FROM schema_version ORDER BY 1")]

    async def test_new_database(self) -> None:
        store = await self.open()
        self.assertEqual(self.versions(), list(range(1, LATEST + 1)))
        self.assertEqual(await store.list_keys(), [])

    async def test_database_of_version_1(self) -> None:
        """
        A database made by the first ccserver is upgraded to this one's
        schema and opens with its data.
        """
        self.by_hand(VERSION_1)
        store = await self.open()
        self.assertEqual(self.versions(), list(range(1, LATEST + 1)))
        self.assertEqual(await store.get_client("client-1"), make_client())
        self.assertEqual(await store.list_keys(), [make_key()])
        await store.revoke_jti("jti-1", 2_000_000_000)
        self.assertIs(await store.is_revoked("jti-1"), True)

    async def test_upgrade_keeps_data(self) -> None:
        """
        A database of version 1 is upgraded through every version in place,
        its data kept (and changed by the test migration); the next open
        changes nothing.
        """
        self.by_hand(VERSION_1)
        migrations = self.migrations_with(TEST_MIGRATION, MIGRATION_2)
        self.assertEqual(len(migrations), TEST_VERSION)
        store = await self.open(migrations)
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))
        self.assertEqual(await store.get_client("client-1"), make_client())
        self.assertEqual(await store.list_keys(), [make_key()])
        self.assertEqual(
            self.query("SELECT client_id, note FROM clients"), [("client-1", "upgraded")]
        )
        await store.add_client(make_client("client-2"))
        await store.close()

        again = await self.open(migrations)
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))
        self.assertEqual(await again.get_client("client-2"), make_client("client-2"))
        # the UPDATE of version 2 did not run again
        self.assertEqual(
            self.query("SELECT client_id, note FROM clients ORDER BY 1"),
            [("client-1", "upgraded"), ("client-2", None)],
        )

    async def test_records_of_earlier_code(self) -> None:
        """
        Rows as ccserver wrote them before the record codec are read as
        they were, and rows written now are the same, column for column.
        """
        store = await self.open()
        self.by_hand(
            [
                _insert("clients", LEGACY_CLIENT_ROW),
                _insert("signing_keys", LEGACY_KEY_ROW),
                _insert("signing_keys", RETIRED_KEY_ROW),
                _insert("access_tokens", LEGACY_TOKEN_ROW),
            ]
        )
        self.assertEqual(await store.get_client(LEGACY_CLIENT.client_id), LEGACY_CLIENT)
        self.assertCountEqual(await store.list_keys(), [LEGACY_KEY, RETIRED_KEY])
        self.assertEqual(await store.get_token(LEGACY_TOKEN.token_digest), LEGACY_TOKEN)

        self.by_hand(
            ["DELETE FROM clients", "DELETE FROM signing_keys", "DELETE FROM access_tokens"]
        )
        await store.add_client(LEGACY_CLIENT)
        await store.add_key(LEGACY_KEY)
        await store.add_key(RETIRED_KEY)
        await store.add_token(LEGACY_TOKEN)
        self.assertEqual(self.query("SELECT * FROM clients"), [LEGACY_CLIENT_ROW])
        self.assertCountEqual(
            self.query("SELECT * FROM signing_keys"), [LEGACY_KEY_ROW, RETIRED_KEY_ROW]
        )
        self.assertEqual(self.query("SELECT * FROM access_tokens"), [LEGACY_TOKEN_ROW])

    async def test_failed_migration_changes_nothing(self) -> None:
        """
        A migration that fails half-way is rolled back whole: the database
        stays at the version before it, with its data, and a fixed migration
        applies later.
        """
        self.by_hand(VERSION_1)
        await (await self.open()).close()
        broken = self.migrations_with(
            f"{TEST_VERSION:04d}_broken.sql",
            "CREATE TABLE extra (x INTEGER);\nUPDATE clients SET metadata = 'x';\nNOT SQL AT ALL;\n",
        )
        store = SQLStore.from_url(self.url, reactor, timeout=TIMEOUT, migrations=broken)
        self.addCleanup(store.close)
        with self.assertRaises(Exception):  # noqa: B017 (each driver its own)
            await store.open()
        await store.close()
        self.assertEqual(self.versions(), list(range(1, LATEST + 1)))
        self.assertFalse(self.table_exists("extra"))
        self.assertEqual(self.query("SELECT metadata FROM clients")[0][0][0], "{")
        fixed = await self.open(self.migrations_with(TEST_MIGRATION, MIGRATION_2))
        self.assertEqual(await fixed.get_client("client-1"), make_client())
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))

    def table_exists(self, name: str) -> bool:
        raise NotImplementedError()

    #: this test case's dialect, and another
    dialect = ""
    other_dialect = ""

    async def test_migration_of_another_dialect(self) -> None:
        """
        A migration for another dialect is recorded and changes nothing:
        its statements are not even run.
        """
        self.by_hand(VERSION_1)
        migrations = self.migrations_with(
            f"{TEST_VERSION:04d}_other.{self.other_dialect}.sql", "NOT SQL AT ALL;\n"
        )
        await (await self.open(migrations)).close()
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))

    async def test_migration_of_this_dialect(self) -> None:
        """
        A migration for this store's dialect is run as any other.
        """
        self.by_hand(VERSION_1)
        migrations = self.migrations_with(
            f"{TEST_VERSION:04d}_own.{self.dialect}.sql", "CREATE TABLE extra (x INTEGER);\n"
        )
        await (await self.open(migrations)).close()
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))
        self.assertTrue(self.table_exists("extra"))

    async def test_newer_database_refused(self) -> None:
        self.by_hand(
            [*VERSION_1, "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)"]
        )
        store = SQLStore.from_url(self.url, reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        with self.assertRaises(ConfigError) as caught:
            await store.open()
        self.assertIn("99", str(caught.exception))

    async def test_concurrent_opens(self) -> None:
        """
        Stores opening one new database at once (as several instances
        starting together) each apply nothing twice, and all work.
        """
        migrations = self.migrations_with(TEST_MIGRATION, MIGRATION_2)
        stores = [
            SQLStore.from_url(self.url, reactor, timeout=TIMEOUT, migrations=migrations)
            for _ in range(4)
        ]
        for store in stores:
            self.addCleanup(store.close)
        results = await DeferredList([store.open() for store in stores], consumeErrors=True)
        for ok, result in results:
            self.assertTrue(ok, result)
        self.assertEqual(self.versions(), list(range(1, TEST_VERSION + 1)))
        await gatherResults(
            [store.add_client(make_client(f"c{i}")) for i, store in enumerate(stores)]
        )
        for i in range(len(stores)):
            self.assertEqual(await stores[0].get_client(f"c{i}"), make_client(f"c{i}"))


class SQLiteMigrationTests(MigrationTestsMixin, TestCase):
    timeout = 60
    dialect, other_dialect = "sqlite", "postgresql"

    def setUp(self) -> None:
        folder = tempfile.mkdtemp(prefix="ccserver-sqlite-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        self.path = Path(folder, "store.db")
        self.url = f"sqlite:///{self.path}"

    def by_hand(self, statements: list[str]) -> None:
        connection = sqlite3.connect(self.path)
        try:
            with connection:
                for statement in statements:
                    connection.execute(statement)
        finally:
            connection.close()

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            return connection.execute(statement).fetchall()
        finally:
            connection.close()

    def table_exists(self, name: str) -> bool:
        return bool(
            self.query(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{name}'")
        )


class PostgreSQLMigrationTests(MigrationTestsMixin, TestCase):
    timeout = 60
    dialect, other_dialect = "postgresql", "sqlite"

    def setUp(self) -> None:
        server = postgres_server()
        name = server.create_database()
        self.addCleanup(server.drop_database, name)
        self.url = server.url_for(name)

    def by_hand(self, statements: list[str]) -> None:
        with psycopg.connect(self.url) as connection:
            for statement in statements:
                connection.execute(statement.encode())

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as connection:
            return connection.execute(statement.encode()).fetchall()

    def table_exists(self, name: str) -> bool:
        return bool(self.query(f"SELECT to_regclass('{name}')")[0][0])

    async def test_tokens_vacuumed_gently(self) -> None:
        """
        Version 16: autovacuum walks access_tokens at a tenth of the
        default pace (what follows a purge of millions of rows); the other
        tables keep PostgreSQL's.
        """
        await (await self.open()).close()
        options = dict(self.query(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('access_tokens', 'clients')"
        ))
        self.assertEqual(options, {
            "access_tokens": ["autovacuum_vacuum_cost_delay=20"], "clients": None,
        })


#: Registers clients, then SIGKILLs itself: nothing gets to flush or close.
KILLED_WRITER = """
import os, signal, sys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from ccserver.stores.sql import SQLStore
from tests.test_store_contract import make_client

async def main():
    store = SQLStore.from_url(sys.argv[1], reactor, timeout=10)
    await store.open()
    for i in range(int(sys.argv[2])):
        await store.add_client(make_client(f"client-{i}"))
    print("registered", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

def failed(failure):
    failure.printTraceback()
    os._exit(3)

reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addErrback(failed))
reactor.run()
"""


class SQLiteTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        folder = tempfile.mkdtemp(prefix="ccserver-sqlite-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        self.path = Path(folder, "store.db")
        self.url = f"sqlite:///{self.path}"

    async def open(self, timeout: float = TIMEOUT) -> SQLStore:
        store = SQLStore.from_url(self.url, reactor, timeout=timeout)
        self.addCleanup(store.close)
        await store.open()
        return store

    def hold_write_lock(self) -> sqlite3.Connection:
        """
        Another connection to the file, holding its write lock (until its
        C{ROLLBACK}), as another process would.
        """
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        return other

    def test_full_token_batch_on_old_sqlite(self) -> None:
        """
        A full batch of tokens (L{sql.TOKEN_BATCH}) is one statement that
        SQLite before 3.32 takes: at most 999 variables.
        """
        connection = sqlite3.connect(":memory:")
        self.addCleanup(connection.close)
        connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, sql.SQLITE_MAX_VARIABLES)
        columns = ", ".join(TOKENS.names)
        connection.execute(f"CREATE TABLE access_tokens ({columns}, PRIMARY KEY (token_digest))")
        rows = [tuple(TOKENS.to_row(make_token(f"{i:064x}"))) for i in range(sql.TOKEN_BATCH)]
        connection.execute(
            sqlstatements.upsert_many("access_tokens", TOKENS, sql.TOKEN_BATCH),
            tuple(value for row in rows for value in row),
        )
        self.assertEqual(
            connection.execute("SELECT count(*) FROM access_tokens").fetchone(), (sql.TOKEN_BATCH,)
        )

    async def test_long_purge_not_cut_at_the_timeout(self) -> None:
        """
        A purge that takes longer than the store's timeout (millions of
        rows expiring together take minutes) goes on to its end: each of
        its batches is bounded by the timeout, not the whole purge, which
        was cancelled at the timeout and reported as the store unavailable.
        """
        store = await self.open(timeout=0.5)
        now = int(time.time())
        for n in range(5):
            await store.add_token(make_token(f"{n:064x}", now - 10))
        in_turns = sql.in_turns

        async def slow(batch: Any, size: int, clock: Any, share: float) -> int:
            # as if the batches before had taken twice the timeout
            await deferLater(reactor, 1.0, lambda: None)
            return await in_turns(batch, size, clock, share)

        self.patch(sql, "in_turns", slow)
        self.assertEqual(await store.purge_expired(now), 5)

    async def test_purger_waits_for_the_write_lock(self) -> None:
        """
        The purge's batches wait for another process's write lock (polling,
        as the token writer does) rather than failing at once.
        """
        store = await self.open()
        now = int(time.time())
        await store.add_token(make_token("a" * 64, now - 10))
        other = self.hold_write_lock()
        purged = store.purge_expired(now)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertNoResult(purged)
        other.execute("ROLLBACK")
        self.assertEqual(await purged, 1)

    async def test_write_takes_the_lock_soon_after_its_release(self) -> None:
        """
        A write on the pool's connection (a brute-force limit's reservation,
        here) that found another process's write lock taken polls for it,
        as the token writer and the purger do, and so goes on within a few
        milliseconds of its release.  SQLite's own busy handler sleeps 100
        ms at a time once it has waited a third of a second: a write
        waiting behind the purge's batches (each holding the lock a few
        milliseconds, in turns) waited up to a second.
        """
        store = await self.open()
        other = self.hold_write_lock()
        keys = AttemptKeys(counter="c", budget=10, cap=None, cap_budget=0, known="k")
        reserved = store.reserve_attempt(keys, time.time(), 60.0)
        # released 7 ms after the busy handler's try at 328 ms: its next
        # is at 428 ms
        await deferLater(reactor, 0.335, lambda: None)
        self.assertNoResult(reserved)
        other.execute("ROLLBACK")
        released = time.monotonic()
        reservation = await reserved
        self.assertTrue(reservation.granted)
        self.assertLess(time.monotonic() - released, 0.06)

    def test_lock_polls_back_off(self) -> None:
        """
        A writer that finds the write lock taken tries again after a tenth
        of a millisecond, then twice as long each time up to a millisecond
        (L{sqldialects.WRITE_LOCK_LONGEST_POLL}): trying every tenth of a
        millisecond cost tens of microseconds of CPU a try, most of it
        holding the GIL, a good part of a core for each writer waiting
        behind the purge.
        """
        pauses: list[float] = []
        tries = 0

        def attempt() -> str:
            nonlocal tries
            tries += 1
            if tries < 9:
                raise sqlite3.OperationalError("database is locked")
            return "written"

        self.patch(sqldialects.time, "sleep", pauses.append)
        result = sqldialects._while_locked(
            attempt, 5.0, sqldialects.WRITE_LOCK_POLL, sqldialects.WRITE_LOCK_LONGEST_POLL
        )
        self.assertEqual(result, "written")
        self.assertEqual(
            [round(p * 10_000, 6) for p in pauses], [1, 2, 4, 8, 10, 10, 10, 10]
        )
        # without a longest pause (the WAL switch's), the pause stays
        del pauses[:]
        tries = 0
        sqldialects._while_locked(attempt, 5.0, 0.01)
        self.assertEqual(pauses, [0.01] * 8)

    async def test_wal_and_full_sync(self) -> None:
        """
        The file is in WAL mode, and the store's connection syncs every
        commit (synchronous=FULL, 2).
        """
        store = await self.open()
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        synchronous = await store._run(
            lambda cursor: cursor.execute("PRAGMA synchronous").fetchone()[0]
        )
        self.assertEqual(synchronous, 2)

    @pytest.mark.process
    def test_survives_sigkill(self) -> None:
        """
        Clients registered by a process that is then SIGKILLed are there
        when the file is opened again.
        """
        count = 20
        result = run_python(
            "-c", KILLED_WRITER, self.url, str(count), cwd=REPO, pythonpath=sys.path
        )
        self.assertEqual(result.returncode, -signal.SIGKILL, result.stderr)
        self.assertEqual(result.stdout, "registered\n")
        # read with sqlite3 itself, not the store: the WAL is replayed
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        ids = {row[0] for row in connection.execute("SELECT client_id FROM clients")}
        self.assertEqual(ids, {f"client-{i}" for i in range(count)})

    @pytest.mark.process
    async def test_reopened_after_sigkill(self) -> None:
        self.test_survives_sigkill()
        store = await self.open()
        self.assertEqual(await store.get_client("client-7"), make_client("client-7"))

    async def test_write_lock_held_elsewhere(self) -> None:
        """
        While another process holds the write lock, a write fails with
        StoreUnavailable within the timeout, reads go on (WAL), and writes
        work again once the lock is released.
        """
        store = await self.open(timeout=0.5)
        await store.add_client(make_client())
        other = self.hold_write_lock()
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await store.add_client(make_client("blocked"))
        self.assertLess(time.monotonic() - started, 0.5 + 1.5)
        self.assertEqual(await store.get_client("client-1"), make_client())
        other.execute("ROLLBACK")
        await store.add_client(make_client("after"))
        self.assertEqual(await store.get_client("after"), make_client("after"))

    async def test_tokens_wait_for_the_write_lock(self) -> None:
        """
        A token batch whose write lock another process holds waits for it
        (polling, not SQLite's backing-off sleeps) and is written once it
        is released; it fails with StoreUnavailable if it never is.
        """
        store = await self.open(timeout=5)
        other = self.hold_write_lock()
        token = make_token()
        written = store.add_token(token)
        released = time.monotonic()
        reactor.callLater(0.3, other.execute, "ROLLBACK")
        await written
        self.assertLess(time.monotonic() - released, 0.3 + 1.0)
        self.assertEqual(await store.get_token(token.token_digest), token)

        short = await self.open(timeout=0.3)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await short.add_token(make_token("e" * 64))
        self.assertLess(time.monotonic() - started, 0.3 + 1.5)
        other.execute("ROLLBACK")

    async def test_tokens_do_not_hold_up_other_operations(self) -> None:
        """
        Token batches have a connection and thread of their own: while one
        waits for a write lock that another process holds, clients are
        still read and written (within the busy timeout) at once.
        """
        store = await self.open(timeout=5)
        await store.add_client(make_client())
        other = self.hold_write_lock()
        token = make_token()
        written = store.add_token(token)
        started = time.monotonic()
        self.assertEqual(await store.get_client("client-1"), make_client())
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertFalse(written.called)
        other.execute("ROLLBACK")
        await written
        self.assertEqual(await store.get_token(token.token_digest), token)

    async def test_two_stores_one_file(self) -> None:
        """
        Two stores on one file (two processes on one machine) write at
        once without "database is locked".
        """
        one, two = await self.open(), await self.open()
        await gatherResults(
            [(one if i % 2 else two).add_client(make_client(f"client-{i}")) for i in range(60)]
        )
        for i in range(60):
            self.assertEqual(await one.get_client(f"client-{i}"), make_client(f"client-{i}"))

    async def test_relative_path(self) -> None:
        """
        sqlite:///name.db is relative to the working folder.
        """
        here = os.getcwd()
        os.chdir(self.path.parent)
        self.addCleanup(os.chdir, here)
        store = SQLStore.from_url("sqlite:///relative.db", reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        await store.add_client(make_client())
        self.assertTrue((self.path.parent / "relative.db").exists())


class PostgreSQLPurgeBatchTests(SynchronousTestCase):
    """
    The purge's batch on PostgreSQL (L{sqlstatements.purge_batch}): it
    goes to its rows by their C{ctid}, and deletes none whose expiry
    another transaction put off while the batch waited for it.
    """

    def setUp(self) -> None:
        self.url = clean_store_url("postgresql", self.addCleanup)
        dialect = sqldialects.postgresql_dialect()
        self.statements = sqlstatements.statements(dialect)
        with psycopg.connect(self.url, autocommit=True) as connection:
            Schema(dialect, load_migrations(), self.url, 30.0).apply_all(connection.cursor())

    def test_rows_by_ctid(self) -> None:
        """
        One walk of the expiry index, then a TID scan: no probe of the
        primary key's index a row.
        """
        now = int(time.time())
        parameters = (now, 5000)
        with psycopg.connect(self.url, autocommit=True) as connection:
            # the tables are empty: plan as for large ones
            connection.execute(b"SET enable_seqscan = off")
            for name in ("purge_tokens", "purge_revoked"):
                plan = "\n".join(row[0] for row in connection.execute(
                    ("EXPLAIN " + self.statements[name]).encode(), parameters))
                self.assertIn("Tid Scan on", plan)
                self.assertNotIn("pkey", plan)

    def test_expiry_put_off_meanwhile(self) -> None:
        """
        A deny-list entry the batch chose while it had expired, whose
        expiry another transaction puts off before the batch deletes it,
        stays: its newest version is not at the C{ctid} the batch chose
        (an array of primary keys deleted it).
        """
        now = int(time.time())
        later = now + 3600
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(b"INSERT INTO revoked_jtis (jti, expires_at) VALUES ('a', %s), ('b', %s)",
                               (now - 10, now - 10))
        revoking = psycopg.connect(self.url)
        self.addCleanup(revoking.close)
        revoking.execute(self.statements["revoke_jti"].encode(), ("a", later))
        deleted: list[int] = []

        def purge() -> None:
            with psycopg.connect(self.url, autocommit=True) as connection:
                deleted.append(connection.execute(
                    self.statements["purge_revoked"].encode(),
                    (now, 5000),
                ).rowcount)

        batch = threading.Thread(target=purge)
        batch.start()
        # the batch waits for the revocation's row lock (asked on a
        # connection of its own: a transaction sees one snapshot of it)
        watching = psycopg.connect(self.url, autocommit=True)
        self.addCleanup(watching.close)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = watching.execute(
                b"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                break
            time.sleep(0.01)
        else:
            self.fail("the batch never waited for the revocation's row lock")
        revoking.commit()
        batch.join(10)
        self.assertEqual(deleted, [1])
        with psycopg.connect(self.url, autocommit=True) as connection:
            rows = connection.execute(b"SELECT jti, expires_at FROM revoked_jtis").fetchall()
        self.assertEqual(rows, [("a", later)])


class PostgreSQLTokenBatchTests(TestCase):
    """
    The token writer's batches on PostgreSQL (L{SQLStore._add_tokens}): one
    statement with one parameter, the rows as JSON, whatever the batch's
    size (psycopg parses a statement of more than 50 parameters anew each
    time it runs it), and every value stored as it was given.
    """

    timeout = 60

    async def setUp(self) -> None:
        url = clean_store_url("postgresql", self.addCleanup)
        connecting = sqldialects.connection_for(url, TIMEOUT)
        dialect = connecting.dialect
        #: (statement, parameters) of each batch the writer ran
        self.written: list[tuple[str, tuple[Any, ...]]] = []

        def write(connection: Any, statement: str, params: tuple[Any, ...], timeout: float) -> int:
            if statement.startswith("INSERT INTO access_tokens"):
                self.written.append((statement, params))
            return dialect.write_tokens(connection, statement, params, timeout)

        self.store = SQLStore(
            url,
            reactor,
            attrs.evolve(connecting, dialect=attrs.evolve(dialect, write_tokens=write)),
            timeout=TIMEOUT,
        )
        await self.store.open()
        self.addCleanup(self.store.close)

    async def test_one_statement_for_every_size(self) -> None:
        """
        Batches of any size, up to the most a batch holds, are each one run
        of the same statement, with one parameter.
        """
        for size, first in ((1, 0), (30, 1), (sql.TOKEN_BATCH, 31)):
            tokens = [make_token(f"{i:064x}", jti=f"jti-{i}") for i in range(first, first + size)]
            await gatherResults([self.store.add_token(token) for token in tokens])
        self.assertEqual(len({statement for statement, _ in self.written}), 1)
        self.assertEqual({len(params) for _, params in self.written}, {1})
        sizes = [len(json.loads(params[0])) for _, params in self.written]
        total = 31 + sql.TOKEN_BATCH
        self.assertEqual(sum(sizes), total)
        self.assertIn(1, sizes)
        # more than 50 values as a VALUES list
        self.assertGreater(max(sizes), 50 // len(TOKENS.names))
        for i in (0, 1, 30, 31, total - 1):
            found = await self.store.get_token(f"{i:064x}")
            self.assertEqual(found, make_token(f"{i:064x}", jti=f"jti-{i}"))

    async def test_values_as_given(self) -> None:
        """
        Text that JSON escapes (quotes, backslashes, control characters,
        letters beyond ASCII and beyond the BMP, an escape's own text),
        large numbers, empty and missing values: each comes back as it was.
        """
        awkward = 'Zo\u00eb "quoted" \\ back\\slash \t tab \u2028 \U0001f511 \\u0000'
        tokens = [
            make_token(
                "a" * 64,
                client_id="client-\u00e9",
                audience=(awkward, "https://api.example/?a=1&b=\"2\""),
                claims={"text": awkward, "nested": {"list": [1, 2.5, None, True]}, "": ""},
                jkt="thumb-print_-",
                x5t_s256=None,
                issued_at=2**53,
                expires_at=2**62,
            ),
            make_token("b" * 64, scope=frozenset(), audience=(), claims={}),
        ]
        await gatherResults([self.store.add_token(token) for token in tokens])
        for token in tokens:
            self.assertEqual(await self.store.get_token(token.token_digest), token)
        self.assertEqual({len(params) for _, params in self.written}, {1})


class PostgreSQLRestartTests(TestCase):
    """
    After a restart of PostgreSQL, the pooled connections are dead; the
    store notices before using one, so not even the first operation after
    the restart fails.
    """

    timeout = 60

    async def test_first_operation_after_restart(self) -> None:
        server = postgres_server("faults")
        name = server.create_database()
        self.addCleanup(lambda: server.running and server.drop_database(name))
        store = SQLStore.from_url(server.url_for(name), reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        await store.add_client(make_client())
        # every pooled connection used at least once
        await gatherResults([store.get_client("client-1") for _ in range(8)])
        await store.add_token(make_token())
        server.restart()
        results = await gatherResults([store.get_client("client-1") for _ in range(8)])
        self.assertEqual(results, [make_client()] * 8)
        # the token writer's own connection is made anew too
        token = make_token("f" * 64)
        await store.add_token(token)
        self.assertEqual(await store.get_token(token.token_digest), token)


class _Dialect:
    """
    A database as the pool sees one (L{ccserver.stores.sqlpool.PoolDialect}):
    SQLite, whose connections the test declares dead at will.
    """

    module = "sqlite3"
    unavailable_errors = (sqlite3.ProgrammingError,)

    def __init__(self) -> None:
        self.dead: set[int] = set()

    def is_stale(self, connection: Any) -> bool:
        return id(connection) in self.dead


class AdbapiAdapterTests(SynchronousTestCase):
    """
    What L{ccserver.stores.sqlpool} takes of adbapi: the private state its
    one adapter reads (L{held_connection}), and the public calls it relies
    on (a transaction's wrapper gets its connection from C{connect()}, and
    rolls back through C{rollback()}).  These fail if adbapi changes under
    them.  The pool is never started: everything runs in this thread.
    """

    def setUp(self) -> None:
        self.dialect = _Dialect()
        self.pool = ConnectionPool(
            self.dialect, ":memory:", cp_reactor=MemoryReactor(), check_same_thread=False
        )
        self.addCleanup(self.pool.finalClose)

    def test_held_connection(self) -> None:
        """
        The thread's connection is what adbapi holds for it by its thread
        id, and nothing once it is disconnected.
        """
        self.assertIsNone(held_connection(self.pool))
        connection = self.pool.connect()
        self.assertIsInstance(connection, sqlite3.Connection)
        self.assertIs(held_connection(self.pool), connection)
        self.assertIs(self.pool.connect(), connection)
        self.pool.disconnect(connection)
        self.assertIsNone(held_connection(self.pool))
        # and once more is no complaint ("wrong connection for thread")
        self.pool.disconnect(connection)

    def test_transaction_wrapper(self) -> None:
        """
        adbapi makes a transaction's wrapper with the pool's
        C{connectionFactory}, which takes its connection from C{connect()}:
        a connection found dead is replaced there, before the transaction.
        """
        first = self.pool.connect()
        wrapper = self.pool.connectionFactory(self.pool)
        self.assertIsInstance(wrapper, PooledConnection)
        self.assertEqual(wrapper.execute("SELECT 1").fetchone(), (1,))
        self.assertIs(held_connection(self.pool), first)
        self.dialect.dead.add(id(first))
        self.pool.connectionFactory(self.pool)
        second = held_connection(self.pool)
        self.assertIsNot(second, first)
        with self.assertRaises(sqlite3.ProgrammingError):
            first.execute("SELECT 1")  # closed by the pool

    def test_failed_rollback_drops_the_connection(self) -> None:
        """
        A rollback on a connection that is gone drops it quietly (no
        "Rollback failed" traceback, no error), and the next transaction
        connects anew.
        """
        wrapper = self.pool.connectionFactory(self.pool)
        connection = held_connection(self.pool)
        connection.close()  # gone under the pool
        wrapper.rollback()
        self.assertIsNone(held_connection(self.pool))
        self.assertEqual(self.pool.connectionFactory(self.pool).execute("SELECT 2").fetchone(), (2,))
